import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { CertificateFiles } from './types.ts';

/** A certificate and key found in the directory, named by the file names they share. */
export interface DirectoryEntry {
  /** `shop.example.com`, `_wildcard.example.com`: the shared part of the file names. */
  name: string;
  files: CertificateFiles;
}

/** What a scan found: the pairs, and files that look like a certificate but have no key beside them. */
export interface DirectoryScan {
  entries: DirectoryEntry[];
  unpaired: string[];
  /** The directories the pairs were found in (the directory and the certbot-style subdirectories), for watching. */
  directories: string[];
}

/**
 * The layouts `tls.directory` accepts. The file name only pairs a certificate with its key; the names
 * a certificate serves are the DNS names written in it, so one certificate for `example.com` and
 * `www.example.com` serves both. Wildcards are conventionally `_wildcard.example.com.*`, as mkcert
 * names them (`*` is awkward in file names). Hidden files and directories are skipped (Kubernetes
 * keeps its `..data` swap there; the `tls.crt` beside it is the name to use).
 *
 * | certificate                  | key                      | written by                          |
 * |------------------------------|--------------------------|-------------------------------------|
 * | `<name>.crt`                 | `<name>.key`             | by hand, Kubernetes secrets (`tls`) |
 * | `<name>.pem`                 | `<name>-key.pem`         | mkcert                              |
 * | `<name>/fullchain.pem`       | `<name>/privkey.pem`     | certbot (`/etc/letsencrypt/live`)   |
 */
export async function scanCertificateDirectory(dir: string): Promise<DirectoryScan> {
  const entries: DirectoryEntry[] = [];
  const unpaired: string[] = [];
  const directories = [dir];
  const names = (await readdir(dir)).filter((n) => !n.startsWith('.')).sort();
  const present = new Set(names);
  for (const file of names) {
    const path = join(dir, file);
    let isDir: boolean;
    try {
      isDir = (await stat(path)).isDirectory();
    } catch {
      continue; // a dangling link or a file gone since readdir: nothing to serve
    }
    if (isDir) {
      const certificate = join(path, 'fullchain.pem');
      const key = join(path, 'privkey.pem');
      if (await exists(certificate)) {
        directories.push(path);
        if (await exists(key)) entries.push({ name: file, files: { certificate, key } });
        else unpaired.push(certificate);
      }
      continue;
    }
    if (file.endsWith('.crt')) {
      const name = file.slice(0, -'.crt'.length);
      if (present.has(`${name}.key`)) entries.push({ name, files: { certificate: path, key: join(dir, `${name}.key`) } });
      else unpaired.push(path);
    } else if (file.endsWith('.pem') && !file.endsWith('-key.pem')) {
      const name = file.slice(0, -'.pem'.length);
      if (present.has(`${name}-key.pem`)) entries.push({ name, files: { certificate: path, key: join(dir, `${name}-key.pem`) } });
      else unpaired.push(path);
    }
  }
  return { entries, unpaired, directories };
}

async function exists(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}
