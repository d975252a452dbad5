# berth in a container. Mount the config at /etc/berth/berth.yaml with
#   state_dir: /var/lib/berth
#   listen: ["0.0.0.0:8080"]
# (the default listen is loopback only, unreachable from outside the container), and the apps'
# sources where the config says. Apps run as the container's user, berth (berth is not root).
# SIGTERM stops berth gracefully (drain, stop apps): give it time with `docker run --stop-timeout 60`
# (the default is 10s), and `--init` to reap processes that apps leave behind.
FROM node:24-slim

ENV NODE_ENV=production

# A directory of berth's own, not node_modules: Node does not strip TypeScript types under node_modules.
# The image runs the sources directly (bin/berth.js runs src/main.ts where there is no dist/): no build.
WORKDIR /opt/berth
COPY package.json package-lock.json ./
RUN npm ci --omit=dev && npm cache clean --force
COPY bin/ bin/
COPY src/ src/

RUN ln -s /opt/berth/bin/berth.js /usr/local/bin/berth \
 && groupadd --system berth \
 && useradd --system --gid berth --home-dir /var/lib/berth --shell /usr/sbin/nologin berth \
 && mkdir -p /var/lib/berth /etc/berth \
 && chown berth:berth /var/lib/berth

USER berth
WORKDIR /var/lib/berth
# Releases, berth.db (SQLite), logs and the control socket.
VOLUME /var/lib/berth
EXPOSE 8080

# The gateway's own health, answered before routing; slim has no curl, so Node's fetch.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:8080/_berth/health', { signal: AbortSignal.timeout(4000) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

CMD ["berth", "start", "--config", "/etc/berth/berth.yaml"]
