// A standards-compliant OpenID Connect provider (npm oidc-provider 9) standing in for
// Google in ketch's tests. Started by tests/support/oidc_provider.py:
//
//   node provider.mjs CONFIG.json
//
// CONFIG: {"host": "127.0.0.1", "port": 0, "accounts": {"alice@corp.com": {claims}},
//          "clients": [{"client_id", "client_secret", "redirect_uris": [...]}],
//          "id_token_ttl": 3600}
//
// The dev interactions give a login page that accepts any password for a login named
// in "accounts" (the login is the account id and `sub`), then a consent page. The ID
// token carries `email`, `email_verified`, `hd`, `name` as Google's does
// (conformIdTokenClaims: false); PKCE (S256) is required of every client.
//
// Test-only controls under /__test/ (loopback only, never part of a real provider):
//   POST /__test/rotate-key        sign with a new RSA key from now on (old one dropped)
//   PUT  /__test/clock   {"offset_seconds": -7200}   shift the provider's clock
//   PUT  /__test/accounts {login: claims}            replace the accounts
//   PUT  /__test/clients [client, ...]               replace the registered clients
//   GET  /__test/state
// Once listening it prints one line of JSON {"issuer": ..., "kid": ...} on stdout.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

import Provider from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const host = config.host ?? '127.0.0.1';

const state = {
  accounts: config.accounts ?? {},
  clients: config.clients ?? [],
  idTokenTtl: config.id_token_ttl ?? 3600,
  offsetMs: 0,
  key: newSigningKey(),
};

// The provider's clock (every oidc-provider timestamp comes from Date.now()): a test
// can make it run slow, so that the ID tokens it issues are already expired.
const realNow = Date.now.bind(Date);
Date.now = () => realNow() + state.offsetMs;

function newSigningKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };
}

function clientMetadata(client) {
  return {
    client_id: client.client_id,
    client_secret: client.client_secret,
    redirect_uris: client.redirect_uris,
    response_types: ['code'],
    grant_types: ['authorization_code'],
    token_endpoint_auth_method: client.token_endpoint_auth_method ?? 'client_secret_basic',
  };
}

const DAY = 24 * 3600;

function buildProvider(issuer) {
  const provider = new Provider(issuer, {
    clients: state.clients.map(clientMetadata),
    jwks: { keys: [state.key] },
    // Google-like claims in the ID token itself, not only from the userinfo endpoint.
    conformIdTokenClaims: false,
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified', 'hd'],
      profile: ['name', 'given_name', 'family_name', 'picture'],
    },
    scopes: ['openid', 'email', 'profile'],
    pkce: { required: () => true },
    features: { devInteractions: { enabled: true } },
    cookies: { keys: ['ketch-test-provider-cookie-key'] },
    // Long-lived interactions and sessions, so that a clock shifted back by hours still
    // leaves the provider's own cookies valid in the browser.
    ttl: {
      Interaction: DAY,
      Session: DAY,
      Grant: DAY,
      AccessToken: 3600,
      AuthorizationCode: 60,
      IdToken: () => state.idTokenTtl,
    },
    async findAccount(_ctx, id) {
      const claims = state.accounts[id];
      if (claims === undefined) return undefined;
      return { accountId: id, claims: async () => ({ sub: id, ...claims }) };
    },
  });
  return provider;
}

let handler = null;
let issuer = null;

function rebuild() {
  handler = buildProvider(issuer).callback();
}

function readJson(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', () => {
      try { resolve(body ? JSON.parse(body) : null); } catch (err) { reject(err); }
    });
    req.on('error', reject);
  });
}

function reply(res, status, data) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(data));
}

function publicState() {
  return { issuer, kid: state.key.kid, offset_seconds: state.offsetMs / 1000 };
}

async function admin(req, res, path) {
  if (req.method === 'POST' && path === '/__test/rotate-key') {
    state.key = newSigningKey();
    rebuild();
    return reply(res, 200, publicState());
  }
  if (req.method === 'PUT' && path === '/__test/clock') {
    const body = await readJson(req);
    state.offsetMs = Math.round(Number(body.offset_seconds) * 1000);
    return reply(res, 200, publicState());
  }
  if (req.method === 'PUT' && path === '/__test/accounts') {
    state.accounts = await readJson(req);
    return reply(res, 200, publicState());
  }
  if (req.method === 'PUT' && path === '/__test/clients') {
    state.clients = await readJson(req);
    rebuild();
    return reply(res, 200, publicState());
  }
  if (req.method === 'GET' && path === '/__test/state') {
    return reply(res, 200, publicState());
  }
  return reply(res, 404, { error: `no test control ${req.method} ${path}` });
}

const server = http.createServer((req, res) => {
  const path = req.url.split('?')[0];
  if (path.startsWith('/__test/')) {
    admin(req, res, path).catch((err) => reply(res, 400, { error: String(err) }));
    return;
  }
  handler(req, res);
});

server.listen(config.port ?? 0, host, () => {
  issuer = `http://${host}:${server.address().port}`;
  rebuild();
  process.stdout.write(`${JSON.stringify(publicState())}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
