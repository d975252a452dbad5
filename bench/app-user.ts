/**
 * The `user` a bench app runs as. As root, berth runs an app whose source root owns as `nobody`, who
 * may not reach the bench's temp dir or the Node inside this checkout: benches measure the proxy, not
 * privilege separation, so their apps run as root then. Spread it into an app's config.
 */
export const benchAppUser: { user?: string } = process.getuid?.() === 0 ? { user: 'root' } : {};
