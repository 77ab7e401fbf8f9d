"""ketch: workflow orchestration for data teams on Kubernetes."""
