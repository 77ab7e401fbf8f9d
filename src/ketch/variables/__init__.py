"""Variables and connections: encrypted at rest, read by tasks through the execution API.

- :mod:`ketch.variables.crypto`: the Fernet keys (``[core] fernet_key``, or a key
  generated once into ``$KETCH_HOME/fernet_key``), MultiFernet for rotation.
- :mod:`ketch.variables.store`: CRUD, Airflow's import/export formats, key rotation.
- :mod:`ketch.variables.sources` and :mod:`ketch.variables.sync`: sync from AWS Secrets
  Manager and mounted files into the variable table.
"""
