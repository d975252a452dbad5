/**
 * How a fleet node goes where the fleet went: the deploy request that makes this node serve a release
 * another node deployed (deployer.ts' FollowTarget). A release this node still has on disk is switched
 * to as a rollback is; any other is made again from the release's own source, with the same id, and
 * must give the same revision.
 */
import type { AppConfig } from '../config/schema.ts';
import { BerthError, ErrorCodes } from '../lib/errors.ts';
import { REDACTED, redactText } from '../lib/redact.ts';
import { FLEET_USER, type DeployRequest } from '../deploy/deployer.ts';
import type { ReleaseStore } from '../deploy/release-store.ts';
import type { AppState, ReleaseRecord } from '../store/store.ts';
import type { ModeState } from '../proxy/router.ts';

export { FLEET_USER };

/**
 * The request that brings this node to `release` with `reloads` applied. Throws BERTH_E_RELEASE when
 * the release cannot be followed: not recorded, or its source held credentials that were never stored.
 */
export async function followRequest(app: AppConfig, releases: ReleaseStore, record: ReleaseRecord | null, release: string, reloads: number, boot = false): Promise<DeployRequest> {
  const follow = { reloads };
  if (await releases.dirOf(release)) return { kind: 'rollback', release, user: FLEET_USER, follow, boot };
  if (!record) throw new BerthError(ErrorCodes.release, `release ${release} of ${app.name} is not recorded in the state store, so this node cannot make it`);
  return { kind: 'deploy', source: sourceOf(app, record), user: FLEET_USER, follow: { ...follow, releaseId: release, revision: record.revision }, boot };
}

/**
 * The source to fetch a recorded release from. The store keeps sources without their credentials: when
 * the recorded one is the app's configured `source` with its credentials hidden, the configured one
 * (with them) is fetched; a recorded source that lost credentials any other way cannot be fetched.
 */
export function sourceOf(app: AppConfig, record: ReleaseRecord): string {
  if (app.source && (record.source === app.source || record.source === redactText(app.source))) return app.source;
  if (record.source.includes(REDACTED)) {
    throw new BerthError(ErrorCodes.release, `release ${record.id} of ${app.name} came from a source with credentials (${record.source}), which are never stored; put that source, with its credentials, in the app's \`source\` so every node can fetch it`);
  }
  return record.source;
}

/** The mode the fleet wants, as the routing table holds one. */
export function desiredMode(state: AppState): ModeState {
  return state.mode === 'normal' ? { mode: 'normal', message: null, retryAfter: null } : { mode: state.mode, message: state.modeMessage, retryAfter: state.modeRetryAfter };
}

export function sameMode(a: ModeState, b: ModeState): boolean {
  return a.mode === b.mode && a.message === b.message && a.retryAfter === b.retryAfter;
}
