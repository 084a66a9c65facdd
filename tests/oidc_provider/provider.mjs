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
// and the authorization-code flow made strict (the library alone accepts any code): codes are
// single-use, bound to their redirect_uri, and PKCE with S256 is required.

import { createServer } from "node:http";
import { createServer as createTlsServer } from "node:https";
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
};

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
  if (action === undefined) return service.requestHandler(req, res);
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
