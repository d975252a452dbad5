-- ACME state (issue 12), in the store rather than loose files so that the nodes of a fleet can share it.
-- Private keys are kept as PEM text: the store file is 0600 (open-store.ts), and no query, log line or
-- error ever quotes them.

-- One account per ACME directory: an account belongs to one CA, and switching from staging to production
-- must not present a staging account key to production.
CREATE TABLE acme_accounts (
  directory TEXT PRIMARY KEY,
  email TEXT,
  key_pem TEXT NOT NULL,
  -- The account's URL at the CA (the `kid` of signed requests); null until the CA has answered.
  url TEXT,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
);

-- One certificate per host name, as Caddy keeps them: a host added or removed never reissues another's.
CREATE TABLE acme_certificates (
  host TEXT PRIMARY KEY,
  -- The directory it was issued by: a certificate from another directory (staging) is not reused.
  directory TEXT NOT NULL,
  -- The leaf followed by its chain.
  certificate_pem TEXT NOT NULL,
  key_pem TEXT NOT NULL,
  not_before TEXT NOT NULL,
  not_after TEXT NOT NULL,
  -- 1: obtained at a handshake (on-demand TLS), 0: for a configured host.
  on_demand INTEGER NOT NULL DEFAULT 0,
  issued_at TEXT NOT NULL
);
