// A real OpenID provider for scripts/chaos and tests/test_chaos.py, built on the oidc-provider package.
//
//   node scripts/oidc/provider.js --port 0 --keys keys.json
//
// --keys is a private JWK Set (the chaos harness writes it; rotating keys = rewrite it and restart this
// process on the same port). oidc-provider signs with the first key of the set that fits the algorithm, and
// publishes every key at the discovery document's jwks_uri, so a set [new, old] signs with `new` while
// tokens signed with `old` keep verifying.
//
// One client, `chaos` / `chaos-secret` (client_secret_post), may use the client_credentials grant. With
// resource=urn:gatekeeper:chaos it gets a JWT access token (ES256, one hour); with resource=
// urn:gatekeeper:short one that expires after one second (the harness's "expired" bad token).
// Prints "oidc provider on http://127.0.0.1:PORT" once it listens; exits on SIGTERM/SIGINT.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import Provider from 'oidc-provider';

const { values } = parseArgs({ options: { port: { type: 'string', default: '0' }, keys: { type: 'string' } } });
if (!values.keys) {
  console.error('provider.js: --keys FILE (a private JWK Set) is required');
  process.exit(2);
}

export const RESOURCES = {
  'urn:gatekeeper:chaos': 3600,
  'urn:gatekeeper:short': 1,
};

function configuration(jwks) {
  return {
    clients: [{
      client_id: 'chaos',
      client_secret: 'chaos-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_post',
      id_token_signed_response_alg: 'ES256',
      scope: 'api',
    }],
    scopes: ['api'],
    jwks,
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:gatekeeper:chaos',
        useGrantedResource: () => true,
        getResourceServerInfo(ctx, resource) {
          const ttl = RESOURCES[resource];
          if (ttl === undefined) throw new Provider.errors.InvalidTarget(`unknown resource ${resource}`);
          return {
            scope: 'api',
            audience: resource,
            accessTokenTTL: ttl,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'ES256' } },
          };
        },
      },
    },
  };
}

const jwks = JSON.parse(readFileSync(values.keys, 'utf8'));
const server = (await import('node:http')).createServer();
server.listen(Number(values.port), '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, configuration(jwks));
  server.on('request', provider.callback());
  console.log(`oidc provider on ${issuer} (kids ${jwks.keys.map((k) => k.kid).join(',')})`);
});

function stop() {
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
