/** ACME accounts and the certificates they obtained (migration 006), for every backend. */
import type { AcmeAccountRecord, AcmeCertificateRecord, AcmeStore } from '../store.ts';
import type { StoreDatabase } from '../database.ts';
import { ACME_ACCOUNTS, ACME_CERTIFICATES, acmeAccountValues, acmeCertificateValues, checkCertificateHost } from '../records.ts';
import { upsert } from '../statements.ts';

// Upserts: the first write's created_at stays, so the row says since when berth has held the account.
const SAVE_ACCOUNT_SQL = upsert(ACME_ACCOUNTS.name, ACME_ACCOUNTS.columns, ['directory'], ['created_at']);
const SAVE_CERTIFICATE_SQL = upsert(ACME_CERTIFICATES.name, ACME_CERTIFICATES.columns, ['host']);

export class Acme implements AcmeStore {
  #db: StoreDatabase;

  constructor(db: StoreDatabase) {
    this.#db = db;
  }

  async getAcmeAccount(directory: string): Promise<AcmeAccountRecord | null> {
    return this.#db.get('read ACME account', `${ACME_ACCOUNTS.select} WHERE directory = $1`, [directory], ACME_ACCOUNTS.fromRow);
  }

  /** Throws BERTH_E_BAD_REQUEST for a bad directory, email, key or time. */
  async saveAcmeAccount(account: AcmeAccountRecord): Promise<void> {
    await this.#db.changes('save ACME account', SAVE_ACCOUNT_SQL, acmeAccountValues(account));
  }

  async getCertificate(host: string): Promise<AcmeCertificateRecord | null> {
    return this.#db.get('read certificate', `${ACME_CERTIFICATES.select} WHERE host = $1`, [host], ACME_CERTIFICATES.fromRow);
  }

  /** Throws BERTH_E_BAD_REQUEST for a bad host, directory, PEM or time. */
  async saveCertificate(certificate: AcmeCertificateRecord): Promise<void> {
    await this.#db.changes('save certificate', SAVE_CERTIFICATE_SQL, acmeCertificateValues(certificate));
  }

  async listCertificates(): Promise<AcmeCertificateRecord[]> {
    return this.#db.all('list certificates', `${ACME_CERTIFICATES.select} ORDER BY host`, [], ACME_CERTIFICATES.fromRow);
  }

  async deleteCertificate(host: string): Promise<boolean> {
    checkCertificateHost(host);
    return (await this.#db.changes('delete certificate', 'DELETE FROM acme_certificates WHERE host = $1', [host])) > 0;
  }
}
