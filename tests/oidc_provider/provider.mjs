// A real OpenID Connect provider for the tests: oauth2-mock-server's issuer, keys and endpoints
// (discovery, JWKS, authorize, token, userinfo), served with a few additions the tests need.
// Every token is signed by the library's own code (OAuth2Issuer.buildToken, jose underneath);
// this file only chooses claims and keys. Started by tests/oidc_provider.py.
//
//   node provider.mjs --port N [--host 127.0.0.1] [--issuer URL] [--alg RS256]
//                     [--tls-key key.pem --tls-cert cert.pem]
//
// Additions, all under /_control/ (a test-only side door, never a part of a real provider):
//   POST /_control/token   {claims, remove, header, expires_in, kid, unpublished} -> {token}
//   POST /_control/rotate  {alg} or {jwk}          -> {kid}   new signing key, old one still published
//   POST /_control/login   {claims}                -> {}      who the next /authorize signs in
//   GET  /_control/stats                           -> {requests: {path: count}}
//   POST /_control/device  {enabled, interval, expires_in, slow_down} -> {}  the device grant, below
// and the authorization-code flow made strict (the library alone accepts any code): codes are
// single-use, bound to their redirect_uri, and PKCE with S256 is required.
//
// The device authorization grant (RFC 8628), which oauth2-mock-server 8.2.3 lacks (its /token
// answers invalid_grant to any other grant_type), is added here, off until a test turns it on
// with /_control/device so that every other test sees the provider exactly as before. When on:
// discovery names device_authorization_endpoint; POST /device_authorization gives a device code
// and a user code; GET /device?user_code=X (the page the person opens) signs in whoever
// /_control/login names, or refuses with &deny=1; POST /token with the device_code grant answers
// authorization_pending, slow_down, access_denied or expired_token as RFC 8628 3.5 says, then the
// tokens, signed like every other (OAuth2Issuer.buildToken) and renewable by refresh_token.
// `slow_down: N` makes the next N polls answer slow_down whatever their pace; `interval: 0` keeps
// no pace (a test's client that does not really sleep is told slow_down only when forced).

import { createServer } from "node:http";
import { createServer as createTlsServer } from "node:https";
import { randomBytes, randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { OAuth2Issuer, OAuth2Service } from "oauth2-mock-server";

const { values: args } = parseArgs({
  options: {
    port: { type: "string" },
    host: { type: "string", default: "127.0.0.1" },
    issuer: { type: "string" },
    alg: { type: "string", default: "RS256" },
    "tls-key": { type: "string" },
    "tls-cert": { type: "string" },
  },
});
if (!args.port) {
  console.error("provider.mjs: --port is required");
  process.exit(2);
}
const tls = Boolean(args["tls-key"] && args["tls-cert"]);
const issuerUrl = args.issuer ?? `${tls ? "https" : "http"}://${args.host}:${args.port}`;

const issuer = new OAuth2Issuer(false);
issuer.url = issuerUrl;
let currentKid = (await issuer.keys.generate(args.alg)).kid;

// Keys the JWKS never shows: tokens from them are real signatures by a key the verifier cannot know.
const unpublished = new OAuth2Issuer(false);
unpublished.url = issuerUrl;
const unpublishedKid = (await unpublished.keys.generate(args.alg)).kid;

const service = new OAuth2Service(issuer);
const requests = {};
let loginClaims = { sub: "johndoe" };
const codes = new Map(); // code -> {redirectUri, pkce, claims}
const refreshTokens = new Map(); // refresh token -> claims

const DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code";
const device = { enabled: false, interval: 5, expiresIn: 600, slowDowns: 0 };
const devices = new Map(); // device code -> {userCode, clientId, scope, claims, denied, expiresAt, interval, lastPoll}

service.on("beforeAuthorizeRedirect", (redirect, req) => {
  const url = redirect.url;
  const code = url.searchParams.get("code");
  if (code === null) return;
  if (req.query.code_challenge === undefined || req.query.code_challenge_method !== "S256") {
    url.searchParams.delete("code");
    url.searchParams.set("error", "invalid_request");
    url.searchParams.set("error_description", "PKCE with code_challenge_method=S256 is required");
    return;
  }
  codes.set(code, { redirectUri: req.query.redirect_uri, claims: { ...loginClaims } });
});

function grantClaims(body) {
  if (body.grant_type === "authorization_code") return codes.get(body.code)?.claims;
  if (body.grant_type === "refresh_token") return refreshTokens.get(body.refresh_token);
  return undefined;
}

service.on("beforeTokenSigning", (token, req) => {
  const claims = grantClaims(req.body);
  if (claims === undefined) return;
  // The library gives both tokens sub "johndoe" and the access token no audience.
  Object.assign(token.payload, { aud: req.body.client_id }, claims);
});

service.on("beforeResponse", (response, req) => {
  const body = req.body;
  const refuse = (description) => {
    response.statusCode = 400;
    response.body = { error: "invalid_grant", error_description: description };
  };
  if (body.grant_type === "authorization_code") {
    const entry = codes.get(body.code);
    codes.delete(body.code);
    if (entry === undefined) return refuse("unknown or already used code");
    if (entry.redirectUri !== body.redirect_uri) return refuse("redirect_uri differs from the authorization request's");
    if (!body.code_verifier) return refuse("code_verifier required");
    if (response.statusCode === 200) refreshTokens.set(response.body.refresh_token, entry.claims);
  } else if (body.grant_type === "refresh_token") {
    const claims = refreshTokens.get(body.refresh_token);
    refreshTokens.delete(body.refresh_token);
    if (claims === undefined) return refuse("unknown refresh token");
    if (response.statusCode === 200) refreshTokens.set(response.body.refresh_token, claims);
  }
});

async function mint(body) {
  const source = body.unpublished ? unpublished : issuer;
  const kid = body.kid ?? (body.unpublished ? unpublishedKid : currentKid);
  return await source.buildToken({
    kid,
    expiresIn: body.expires_in ?? 3600,
    scopesOrTransform: (header, payload) => {
      Object.assign(header, body.header ?? {});
      Object.assign(payload, body.claims ?? {});
      for (const name of body.remove ?? []) delete payload[name];
    },
  });
}

const control = {
  "POST /_control/token": async (body) => ({ token: await mint(body) }),
  "POST /_control/rotate": async (body) => {
    const key = body.jwk ? await issuer.keys.add(body.jwk) : await issuer.keys.generate(body.alg ?? args.alg);
    currentKid = key.kid;
    return { kid: currentKid };
  },
  "POST /_control/login": async (body) => {
    loginClaims = { sub: "johndoe", ...(body.claims ?? {}) };
    return {};
  },
  "GET /_control/stats": async () => ({ requests }),
  "POST /_control/device": async (body) => {
    device.enabled = Boolean(body.enabled);
    device.interval = body.interval ?? 5;
    device.expiresIn = body.expires_in ?? 600;
    device.slowDowns = body.slow_down ?? 0;
    return {};
  },
};

function sendJson(res, status, body) {
  res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store" }).end(JSON.stringify(body));
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString("utf8")));
}

// User codes as RFC 8628 6.1 suggests: consonants only (no words, no 0/O or 1/I to mistake), 8 of them.
function userCode() {
  const letters = "BCDFGHJKLMNPQRSTVWXZ";
  const bytes = randomBytes(8);
  const chosen = Array.from(bytes, (byte) => letters[byte % letters.length]).join("");
  return `${chosen.slice(0, 4)}-${chosen.slice(4)}`;
}

function deviceByUserCode(code) {
  for (const [deviceCode, entry] of devices) if (entry.userCode === code) return [deviceCode, entry];
  return [undefined, undefined];
}

async function deviceTokens(entry) {
  const sign = (claims) => issuer.buildToken({
    kid: currentKid,
    expiresIn: 3600,
    scopesOrTransform: (_header, payload) => Object.assign(payload, { aud: entry.clientId, scope: entry.scope }, claims),
  });
  const refreshToken = randomUUID();
  refreshTokens.set(refreshToken, entry.claims);
  return {
    access_token: await sign(entry.claims),
    id_token: await sign(entry.claims),
    refresh_token: refreshToken,
    token_type: "Bearer",
    expires_in: 3600,
    scope: entry.scope,
  };
}

// Only while the grant is on (device.enabled), and only what the library lacks: anything else on
// these paths returns false and goes to the library as before.
async function handleDevice(req, res, path) {
  const base = issuerUrl.replace(/\/$/, "");
  if (req.method === "GET" && path === "/.well-known/openid-configuration") {
    // The library's own document, plus the endpoint and the grant.
    service.openidConfigurationHandler(req, {
      json: (document) => sendJson(res, 200, {
        ...document,
        device_authorization_endpoint: `${base}/device_authorization`,
        grant_types_supported: [...document.grant_types_supported, "refresh_token", DEVICE_GRANT],
      }),
    });
    return true;
  }
  if (req.method === "POST" && path === "/device_authorization") {
    const form = await readForm(req);
    if (!form.client_id) return sendJson(res, 400, { error: "invalid_client", error_description: "client_id required" }), true;
    const deviceCode = randomUUID();
    const code = userCode();
    devices.set(deviceCode, {
      userCode: code, clientId: form.client_id, scope: form.scope ?? "openid", claims: undefined, denied: false,
      expiresAt: Date.now() + device.expiresIn * 1000, interval: device.interval, lastPoll: 0,
      paced: device.interval > 0, // interval 0: no pace is kept, only forced slow_downs
    });
    sendJson(res, 200, {
      device_code: deviceCode, user_code: code, verification_uri: `${base}/device`,
      verification_uri_complete: `${base}/device?user_code=${encodeURIComponent(code)}`,
      expires_in: device.expiresIn, interval: device.interval,
    });
    return true;
  }
  if (req.method === "GET" && path === "/device") {
    const query = new URL(req.url, issuerUrl).searchParams;
    const [, entry] = deviceByUserCode(query.get("user_code"));
    if (entry === undefined || entry.expiresAt < Date.now()) {
      res.writeHead(404, { "content-type": "text/plain" }).end("unknown or expired code");
      return true;
    }
    if (query.get("deny")) entry.denied = true;
    else entry.claims = { ...loginClaims };
    res.writeHead(200, { "content-type": "text/plain" }).end(entry.denied ? "Refused." : "Device signed in.");
    return true;
  }
  if (req.method === "POST" && path === "/token") {
    const form = await readForm(req);
    if (form.grant_type !== DEVICE_GRANT) {
      // The body is read: hand the library the parsed form (body-parser skips a finished request).
      req.body = form;
      return false;
    }
    const entry = devices.get(form.device_code);
    if (entry === undefined || entry.clientId !== form.client_id) return sendJson(res, 400, { error: "invalid_grant" }), true;
    const now = Date.now();
    if (entry.expiresAt < now) {
      devices.delete(form.device_code);
      return sendJson(res, 400, { error: "expired_token" }), true;
    }
    if (entry.denied) {
      devices.delete(form.device_code);
      return sendJson(res, 400, { error: "access_denied" }), true;
    }
    // A little leeway: a client that waits exactly the interval must not be told to slow down.
    const early = entry.paced && now - entry.lastPoll < entry.interval * 1000 - 50;
    entry.lastPoll = now;
    if (early || device.slowDowns > 0) {
      device.slowDowns = Math.max(0, device.slowDowns - 1);
      // RFC 8628 3.5: the client must add 5 seconds to its interval from now on.
      entry.interval += 5;
      return sendJson(res, 400, { error: "slow_down" }), true;
    }
    if (entry.claims === undefined) return sendJson(res, 400, { error: "authorization_pending" }), true;
    devices.delete(form.device_code); // a device code gives tokens once
    sendJson(res, 200, await deviceTokens(entry));
    return true;
  }
  return false;
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString("utf8");
  return text ? JSON.parse(text) : {};
}

async function handle(req, res) {
  const path = new URL(req.url, issuerUrl).pathname;
  requests[path] = (requests[path] ?? 0) + 1;
  const action = control[`${req.method} ${path}`];
  if (action === undefined) {
    if (device.enabled && (await handleDevice(req, res, path))) return;
    return service.requestHandler(req, res);
  }
  try {
    const answer = await action(await readJson(req));
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(answer));
  } catch (error) {
    res.writeHead(400, { "content-type": "application/json" }).end(JSON.stringify({ error: String(error) }));
  }
}

const server = tls
  ? createTlsServer({ key: readFileSync(args["tls-key"]), cert: readFileSync(args["tls-cert"]) }, handle)
  : createServer(handle);
server.listen(Number(args.port), args.host, () => console.log(`ready ${issuerUrl}`));
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => server.close(() => process.exit(0)));
