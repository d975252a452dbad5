/**
 * One ACME conversation at a time per host, through `acme-client`: the account (created once, kept in the
 * state store), orders, and the answers to the CA's challenges while they are pending. What to order and
 * when is the manager's (acme-manager.ts); this file only talks to the CA.
 */
import { Agent as HttpsAgent } from 'node:https';
import { createSecureContext, type SecureContext } from 'node:tls';
import type { Client } from 'acme-client';
import { BerthError, ErrorCodes, errorMessage } from '../../lib/errors.ts';
import type { Logger } from '../../lib/logger.ts';
import type { AcmeStore } from '../../store/store.ts';
import { SHARE_SETTLE_MS, type AcmeFleet } from './fleet-share.ts';
import type { PemPair } from '../types.ts';
import { tlsContextOptions } from '../server-options.ts';

/** The challenge the CA is asked to validate: HTTP-01 on the cleartext port, TLS-ALPN-01 on the TLS port. */
export type AcmeChallenge = 'http-01' | 'tls-alpn-01';
/** The ALPN protocol a TLS-ALPN-01 validation offers (RFC 8737). */
export const ACME_TLS_ALPN_PROTOCOL = 'acme-tls/1';
/** A CA that does not answer within this is given up on for this attempt (axios has no timeout of its own). */
export const ACME_REQUEST_TIMEOUT_MS = 30_000;
/** acme-client's first poll delay for a pending challenge or order; it doubles up to 30 s. */
export const ACME_POLL_MIN_MS = 2_000;

type AcmeModule = typeof import('acme-client');
let acmeModule: Promise<AcmeModule> | null = null;

/**
 * acme-client, loaded the first time a gateway uses ACME: with axios and the ASN.1 and X.509 code under
 * it, it costs about 40 MB of resident memory, which a gateway without ACME should not carry.
 */
function loadAcme(): Promise<AcmeModule> {
  acmeModule ??= import('acme-client');
  return acmeModule;
}

export interface AcmeIssuerOptions {
  directoryUrl: string;
  email: string | null;
  /** PEM of the CA that signed the directory's HTTPS certificate (a private CA, pebble); null: the system's roots. */
  caRoot: string | null;
  challenge: AcmeChallenge;
  store: AcmeStore;
  logger: Logger;
  now: () => number;
  pollMinMs?: number;
  requestTimeoutMs?: number;
  /** Told whenever the pending HTTP-01 answers change. */
  onHttpTokens?: (tokens: [string, string][]) => void;
  /** Told when a TLS-ALPN-01 challenge certificate is made for a host (null: its challenge is over). */
  onAlpnChallenge?: (host: string, pem: PemPair | null) => void;
  /** A fleet: answers are handed to every node, which the CA may ask instead of this one. */
  fleet?: AcmeFleet | null;
}

/** A certificate as the CA issued it, with the key made for it. */
export interface IssuedCertificate {
  certificatePem: string;
  keyPem: string;
}

/** An order or account step the CA refused or that did not complete; the message is the CA's problem detail. */
export class AcmeError extends BerthError {
  readonly host: string | null;

  constructor(host: string | null, message: string, cause?: unknown) {
    super(ErrorCodes.unavailable, host ? `ACME: no certificate for ${host}: ${message}` : `ACME: ${message}`, { cause, details: host ? { host } : undefined });
    this.name = 'AcmeError';
    this.host = host;
  }
}

export class AcmeIssuer {
  readonly directoryUrl: string;
  #opts: AcmeIssuerOptions;
  #log: Logger;
  #client: Promise<Client> | null = null;
  /** HTTP-01: token → key authorization, while the CA may ask for it. */
  #tokens = new Map<string, string>();
  /** TLS-ALPN-01: host → the self-signed challenge certificate's context, while the CA may ask for it. */
  #alpn = new Map<string, SecureContext>();
  #interceptor: number | null = null;
  #agent: HttpsAgent | null = null;
  /** acme-client once start() has loaded it and set this issuer's interceptor on it. */
  #acme: Promise<AcmeModule> | null = null;
  #loaded: AcmeModule | null = null;

  constructor(opts: AcmeIssuerOptions) {
    this.#opts = opts;
    this.directoryUrl = opts.directoryUrl;
    this.#log = opts.logger;
  }

  /**
   * Routes acme-client's requests to this directory's host through a timeout, and through an agent that
   * trusts `caRoot` when one is set. acme-client has one axios instance per process, so the setting is
   * scoped by host rather than set on its defaults; other directories keep the system's roots.
   */
  start(): void {
    if (this.#acme !== null) return;
    const host = new URL(this.#opts.directoryUrl).host;
    const agent = this.#opts.caRoot ? new HttpsAgent({ ca: this.#opts.caRoot, keepAlive: true }) : null;
    this.#agent = agent;
    this.#acme = loadAcme().then((acme) => {
      // Stopped while it loaded: nothing to set.
      if (this.#agent !== agent) return acme;
      this.#loaded = acme;
      this.#intercept(acme, host, agent);
      return acme;
    });
    // A failed load is reported by the first order that needs the module.
    this.#acme.catch(() => {});
  }

  #intercept(acme: AcmeModule, host: string, agent: HttpsAgent | null): void {
    const timeout = this.#opts.requestTimeoutMs ?? ACME_REQUEST_TIMEOUT_MS;
    this.#interceptor = acme.axios.interceptors.request.use((config) => {
      let target: string | null = null;
      try {
        target = config.url ? new URL(config.url).host : null;
      } catch {
        // a relative URL is not one of ours
      }
      if (target === host) {
        if (agent) config.httpsAgent = agent;
        config.timeout = timeout;
      }
      return config;
    });
  }

  stop(): void {
    if (this.#interceptor !== null) this.#loaded?.axios.interceptors.request.eject(this.#interceptor);
    this.#interceptor = null;
    this.#acme = null;
    this.#agent?.destroy();
    this.#agent = null;
    this.#tokens.clear();
    this.#alpn.clear();
    this.#tokensChanged();
  }

  /** Every pending HTTP-01 answer: token, key authorization. */
  httpTokens(): [string, string][] {
    return [...this.#tokens];
  }

  #tokensChanged(): void {
    this.#opts.onHttpTokens?.(this.httpTokens());
  }

  /** The key authorization to answer `GET /.well-known/acme-challenge/<token>` with, or null (404). */
  httpChallenge(token: string): string | null {
    return this.#tokens.get(token) ?? null;
  }

  /** The challenge certificate for a handshake that offers `acme-tls/1` for `servername`, or null. */
  alpnChallengeContext(servername: string): SecureContext | null {
    return this.#alpn.get(servername.toLowerCase().replace(/\.$/, '')) ?? null;
  }

  /** Whether any TLS-ALPN-01 challenge is pending (a listener need not look at ALPN otherwise). */
  get alpnPending(): boolean {
    return this.#alpn.size > 0;
  }

  /**
   * Orders a certificate for one host, answers its challenge, and returns the chain and its new key
   * (ECDSA P-256). Throws AcmeError with the CA's reason. Keys appear in no message.
   */
  async issue(host: string): Promise<IssuedCertificate> {
    const acme = await this.#module();
    const client = await this.#account();
    const acmeCrypto = acme.crypto;
    const key = await acmeCrypto.createPrivateEcdsaKey('P-256');
    const keyPem = key.toString('utf8');
    // The CN holds at most 64 characters; the name is in the subjectAltName either way, which is what counts.
    const [, csr] = await acmeCrypto.createCsr(host.length <= 64 ? { commonName: host, altNames: [host] } : { altNames: [host] }, key);
    let certificatePem: string;
    try {
      certificatePem = await client.auto({
        csr,
        email: this.#opts.email ?? undefined,
        termsOfServiceAgreed: true,
        challengePriority: [this.#opts.challenge],
        // acme-client's own check fetches the challenge through public DNS and port 80/443 of the host,
        // which says nothing the CA will not say itself, and fails behind NAT or split DNS.
        skipChallengeVerification: true,
        challengeCreateFn: async (_authz, challenge, keyAuthorization) => this.#answer(host, challenge.type, challenge.token, keyAuthorization),
        challengeRemoveFn: async (_authz, challenge) => this.#forget(host, challenge.type, challenge.token),
      });
    } catch (err) {
      throw new AcmeError(host, caReason(err), err);
    } finally {
      key.fill(0);
    }
    return { certificatePem, keyPem };
  }

  async #answer(host: string, type: string, token: string, keyAuthorization: string): Promise<void> {
    const fleet = this.#opts.fleet ?? null;
    if (type === 'http-01') {
      this.answerShared(`http-01:${token}`, keyAuthorization);
      await fleet?.share(`http-01:${token}`, keyAuthorization);
    } else if (type === 'tls-alpn-01') {
      const acmeCrypto = (await this.#module()).crypto;
      const alpnKey = await acmeCrypto.createPrivateEcdsaKey('P-256');
      const [, cert] = await acmeCrypto.createAlpnCertificate({ identifier: { type: 'dns', value: host } } as Parameters<AcmeModule['crypto']['createAlpnCertificate']>[0], keyAuthorization, alpnKey);
      // A throwaway key made for this one validation: proxy worker threads, and a fleet's nodes, answer it too.
      const pem: PemPair = { certificate: cert.toString('utf8'), key: alpnKey.toString('utf8') };
      alpnKey.fill(0);
      this.answerShared(`tls-alpn-01:${host}`, JSON.stringify(pem));
      await fleet?.share(`tls-alpn-01:${host}`, JSON.stringify(pem));
    } else {
      throw new Error(`the CA offered no ${this.#opts.challenge} challenge (got ${type})`);
    }
    // The other nodes hear of the answer through the store's notifications: give them a moment.
    if (fleet) await new Promise((r) => setTimeout(r, SHARE_SETTLE_MS));
    this.#log.debug({ host, challenge: type, fleet: fleet !== null }, 'ACME challenge ready');
  }

  #forget(host: string, type: string, token: string): void {
    const key = type === 'http-01' ? `http-01:${token}` : `tls-alpn-01:${host}`;
    this.answerShared(key, null);
    this.#opts.fleet?.unshare(key).catch((err: unknown) => this.#log.warn({ host, err: errorMessage(err) }, 'ACME answer not removed from the store'));
  }

  /**
   * Starts (or, with null, stops) answering a challenge: this node's own, or one another node of the
   * fleet shared (`http-01:<token>` with the key authorization, `tls-alpn-01:<host>` with the challenge
   * certificate and key as JSON). Something that is neither is ignored: it came from the store.
   */
  answerShared(key: string, value: string | null): void {
    const colon = key.indexOf(':');
    const kind = key.slice(0, colon);
    const name = key.slice(colon + 1);
    if (kind === 'http-01') {
      if (value === null) this.#tokens.delete(name);
      else this.#tokens.set(name, value);
      this.#tokensChanged();
    } else if (kind === 'tls-alpn-01') {
      if (value === null) {
        this.#alpn.delete(name);
        this.#opts.onAlpnChallenge?.(name, null);
        return;
      }
      let pem: PemPair;
      try {
        pem = JSON.parse(value) as PemPair;
        this.#alpn.set(name, createSecureContext({ ...tlsContextOptions(), key: pem.key, cert: pem.certificate }));
      } catch (err) {
        this.#log.warn({ host: name, err: errorMessage(err) }, 'shared TLS-ALPN-01 answer not usable');
        return;
      }
      this.#opts.onAlpnChallenge?.(name, pem);
    }
  }

  /**
   * The client on berth's account at this directory. The key is made once and kept in the store; every
   * start presents it again (newAccount with an existing key answers the existing account), which also
   * heals a CA that forgot it (pebble restarted, a staging reset).
   */
  #account(): Promise<Client> {
    this.#client ??= this.#openAccount().catch((err: unknown) => {
      this.#client = null; // try again at the next order
      throw err instanceof AcmeError ? err : new AcmeError(null, `cannot open the account at ${this.#opts.directoryUrl}: ${caReason(err)}`, err);
    });
    return this.#client;
  }

  /** acme-client with this issuer's interceptor set (start() loads it; an issuer used unstarted loads it here). */
  #module(): Promise<AcmeModule> {
    return this.#acme ?? loadAcme();
  }

  async #openAccount(): Promise<Client> {
    const { store, directoryUrl, email } = this.#opts;
    const acme = await this.#module();
    const stored = await store.getAcmeAccount(directoryUrl);
    const keyPem = stored?.keyPem ?? (await acme.crypto.createPrivateEcdsaKey('P-256')).toString('utf8');
    const client = new acme.Client({ directoryUrl, accountKey: keyPem, backoffMin: this.#opts.pollMinMs ?? ACME_POLL_MIN_MS, backoffAttempts: 10 });
    const contact = email ? [`mailto:${email}`] : [];
    await client.createAccount({ termsOfServiceAgreed: true, contact });
    // newAccount with a known key answers the account as it is: a changed email is sent as an update.
    if (stored && stored.email !== email) await client.updateAccount({ contact });
    const url = client.getAccountUrl();
    if (!stored || stored.url !== url || stored.email !== email) {
      const at = new Date(this.#opts.now()).toISOString();
      await store.saveAcmeAccount({ directory: directoryUrl, email, keyPem, url, createdAt: stored?.createdAt ?? at, updatedAt: at });
      this.#log.info({ directory: directoryUrl, account: url, created: !stored }, stored ? 'ACME account updated' : 'ACME account created');
    }
    return client;
  }
}

/** The CA's problem detail (acme-client puts it in the message), else the transport's error. */
function caReason(err: unknown): string {
  return errorMessage(err).replace(/\s+/g, ' ').trim().slice(0, 500);
}
