-- PostgreSQL dialect of ../migrations/006-certificates.sql (see there). `on_demand` stays a 0/1 integer
-- rather than a boolean, so both backends write the same values through the same record mapping.
CREATE TABLE acme_accounts (
  directory TEXT COLLATE "C" PRIMARY KEY,
  email TEXT,
  key_pem TEXT NOT NULL,
  url TEXT,
  created_at TEXT COLLATE "C" NOT NULL,
  updated_at TEXT COLLATE "C" NOT NULL
);

CREATE TABLE acme_certificates (
  host TEXT COLLATE "C" PRIMARY KEY,
  directory TEXT COLLATE "C" NOT NULL,
  certificate_pem TEXT NOT NULL,
  key_pem TEXT NOT NULL,
  not_before TEXT COLLATE "C" NOT NULL,
  not_after TEXT COLLATE "C" NOT NULL,
  on_demand INTEGER NOT NULL DEFAULT 0,
  issued_at TEXT COLLATE "C" NOT NULL
);
