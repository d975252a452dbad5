// berth dashboard: reads the control API with the caller's credentials and follows GET /v1/events
// (server-sent events, read through fetch so a bearer token can go with them). Every value from the
// API is put on the page as text, never as HTML.

const TOKEN_KEY = 'berth.token';
const MODES = ['normal', 'maintenance', 'read-only'];
const DEPLOYS_SHOWN = 5;
const HISTORY_REFRESH_MS = 15_000;
const RECONNECT_MS = 2_000;

const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  who: null,
  /** app name -> { root, refs } */
  cards: new Map(),
  /** deploy id -> { root, steps: Map(step -> li), title, badge } */
  deploys: new Map(),
  stream: null,
  historyTimer: null,
};

// ---- helpers ----------------------------------------------------------------------------------

/** Creates an element with attributes and children (strings become text nodes). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function duration(ms) {
  if (ms === null || ms === undefined) return '–';
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${(ms / 1000).toFixed(1)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

function time(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

function authHeaders() {
  return state.token ? { authorization: `Bearer ${state.token}` } : {};
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** One JSON call to the control API; errors carry the API's code and message. */
async function api(method, path, body) {
  const headers = { ...authHeaders(), accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new ApiError(res.status, data.error?.code ?? 'BERTH_E_INTERNAL', data.error?.message ?? `the gateway answered ${res.status}`);
  return data;
}

function notice(message, kind = 'error') {
  const n = $('notice');
  n.textContent = message;
  n.className = kind === 'info' ? 'info' : '';
  n.hidden = !message;
}

/** Asks for confirmation in a modal dialog; resolves true on Confirm. */
function confirmAction(title, text) {
  const dialog = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.returnValue = 'cancel';
    dialog.showModal();
  });
}

// ---- login --------------------------------------------------------------------------------------

function showLogin(message = '') {
  stopStream();
  state.who = null;
  $('dashboard').hidden = true;
  $('logout').hidden = true;
  $('reload-config').hidden = true;
  $('whoami').textContent = '';
  $('login').hidden = false;
  $('login-error').textContent = message;
  $('token').focus();
}

async function login(event) {
  event.preventDefault();
  const token = $('token').value.trim();
  if (!token) return;
  state.token = token;
  try {
    await start();
    sessionStorage.setItem(TOKEN_KEY, token);
    $('token').value = '';
  } catch (err) {
    state.token = null;
    $('login-error').textContent = err.status === 401 ? 'That token is not accepted.' : err.message;
  }
}

function logout() {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  for (const { root } of state.cards.values()) root.remove();
  state.cards.clear();
  showLogin();
}

/** Who am I, then the live view. Throws ApiError (401 when the credentials are refused). */
async function start() {
  const who = await api('GET', 'v1/whoami');
  state.who = who;
  $('login').hidden = true;
  $('dashboard').hidden = false;
  $('whoami').textContent = `${who.user} (${who.roles.join(', ')})${who.apps ? ` · ${who.apps.allowed.join(', ')}` : ''}`;
  $('logout').hidden = who.channel !== 'tcp';
  $('reload-config').hidden = !who.can.configReload;
  openStream();
  refreshHistory();
  refreshFleet();
  clearInterval(state.historyTimer);
  state.historyTimer = setInterval(() => {
    refreshHistory();
    refreshFleet();
  }, HISTORY_REFRESH_MS);
}

// ---- live events ----------------------------------------------------------------------------------

function stopStream() {
  clearInterval(state.historyTimer);
  if (state.stream) state.stream.abort();
  state.stream = null;
}

async function openStream() {
  if (state.stream) state.stream.abort();
  const ctrl = new AbortController();
  state.stream = ctrl;
  try {
    const res = await fetch('v1/events', { headers: authHeaders(), signal: ctrl.signal, cache: 'no-store' });
    if (res.status === 401) {
      if (state.token) sessionStorage.removeItem(TOKEN_KEY);
      state.token = null;
      showLogin('Your session has ended; log in again.');
      return;
    }
    if (!res.ok || !res.body) throw new Error(`events: ${res.status}`);
    $('connection').textContent = 'live';
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let i;
      while ((i = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, i);
        buffer = buffer.slice(i + 2);
        onBlock(block);
      }
    }
  } catch {
    // A network error or an abort: reconnect below unless this stream was replaced or stopped.
  }
  if (state.stream !== ctrl || ctrl.signal.aborted) return;
  $('connection').textContent = 'reconnecting…';
  setTimeout(() => {
    if (state.stream === ctrl) openStream();
  }, RECONNECT_MS);
}

function onBlock(block) {
  let event = 'message';
  let data = '';
  for (const line of block.split('\n')) {
    if (line.startsWith('event: ')) event = line.slice(7);
    else if (line.startsWith('data: ')) data += line.slice(6);
  }
  if (!data) return;
  const payload = JSON.parse(data);
  if (event === 'status') renderStatus(payload);
  else if (event === 'deploy') renderDeployEvent(payload);
  else if (event === 'deploy-end') {
    renderDeployEnd(payload);
    refreshHistory();
  }
}

// ---- apps -----------------------------------------------------------------------------------------

function renderStatus(status) {
  $('gateway').textContent = `berth ${status.version} · ${status.state}${status.environment ? ` · ${status.environment}` : ''} · up ${duration(status.uptimeMs)}`;
  const seen = new Set();
  for (const app of status.apps) {
    seen.add(app.name);
    let card = state.cards.get(app.name);
    if (!card) {
      card = makeCard(app.name);
      state.cards.set(app.name, card);
      $('apps').append(card.root);
    }
    updateCard(card, app);
  }
  for (const [name, card] of state.cards) {
    if (seen.has(name)) continue;
    card.root.remove();
    state.cards.delete(name);
  }
}

/**
 * Whether the buttons of an app show: the gateway said so at login, or (an app added by a config reload
 * since) the caller's role and app rule allow it. The API checks again on every change.
 */
function mayChange(name) {
  const who = state.who;
  if (!who) return false;
  if (who.changeable.includes(name)) return true;
  if (!who.can.deploy) return false;
  return !who.apps || who.apps.allowed.some((source) => new RegExp(source).test(name));
}

function makeCard(name) {
  const id = `app-${name.replace(/[^A-Za-z0-9_-]/g, '_')}`;
  const refs = {
    mode: el('span', { class: 'badge' }),
    health: el('span', { class: 'badge' }),
    phase: el('span', { class: 'badge' }),
    release: el('dd'),
    queue: el('dd'),
    rate: el('dd'),
    db: el('dd'),
    reasons: el('p', { class: 'reasons', hidden: true }),
    rows: el('tbody'),
  };
  const fact = (label, dd) => el('div', {}, el('dt', { text: label }), dd);
  const root = el(
    'article',
    { class: 'app', 'data-app': name, 'aria-labelledby': `${id}-title` },
    el('header', {}, el('h3', { id: `${id}-title`, text: name }), refs.mode, refs.health, refs.phase),
    refs.reasons,
    el('dl', { class: 'facts' }, fact('Active release', refs.release), fact('Queue', refs.queue), fact('Requests/s', refs.rate), fact('DB connections', refs.db)),
    el(
      'div',
      { class: 'scroll' },
      el(
        'table',
        {},
        el('caption', { class: 'sr-only', text: `Instances of ${name}` }),
        el('thead', {}, el('tr', {}, ...['Instance', 'Generation', 'State', 'PID', 'In flight', 'Served', 'RSS', 'Uptime'].map((h) => el('th', { scope: 'col', text: h })))),
        refs.rows,
      ),
    ),
  );
  if (mayChange(name)) root.append(makeControls(name, id, refs));
  return { root, refs };
}

function makeControls(name, id, refs) {
  const select = el('select', { id: `${id}-mode`, name: 'mode' }, ...MODES.map((m) => el('option', { value: m, text: m })));
  refs.select = select;
  const run = (label, fn) => async (event) => {
    const button = event.currentTarget;
    button.disabled = true;
    try {
      await fn();
    } catch (err) {
      notice(`${label} ${name}: ${err.message}`);
    } finally {
      button.disabled = false;
    }
  };
  const switchMode = run('Switching the mode of', async () => {
    const mode = select.value;
    if (!(await confirmAction(`Switch ${name} to ${mode}?`, `New requests to ${name} are served in ${mode} mode at once.`))) return;
    await api('PUT', `v1/apps/${encodeURIComponent(name)}/mode`, { mode });
    notice(`${name} is now in ${mode} mode.`, 'info');
    refreshHistory();
  });
  const deployLike = (kind, verb, text) =>
    run(verb, async () => {
      if (!(await confirmAction(`${verb} ${name}?`, text))) return;
      const { id: deploy } = await api('POST', `v1/apps/${encodeURIComponent(name)}/${kind}`, {});
      notice(`${verb} of ${name} started (${deploy}).`, 'info');
      refreshHistory();
    });
  return el(
    'div',
    { class: 'controls' },
    el('div', { class: 'field' }, el('label', { for: `${id}-mode` }, 'Mode'), select),
    el('button', { type: 'button', 'aria-label': `Switch mode of ${name}`, onclick: switchMode }, 'Switch mode'),
    el('button', { type: 'button', 'aria-label': `Reload ${name}`, onclick: deployLike('reload', 'Reload', `Starts new instances of ${name} on its active release, then drains and stops the old ones. No request is dropped.`) }, 'Reload'),
    el('button', { type: 'button', class: 'danger', 'aria-label': `Roll back ${name}`, onclick: deployLike('rollback', 'Roll back', `Goes back to the previous good release of ${name}.`) }, 'Roll back'),
  );
}

function updateCard(card, app) {
  const { refs } = card;
  card.root.dataset.mode = app.mode;
  refs.mode.textContent = app.mode;
  refs.mode.className = `badge ${app.mode}`;
  refs.mode.title = app.modeMessage ?? '';
  refs.health.textContent = app.healthy ? 'healthy' : 'unhealthy';
  refs.health.className = `badge ${app.healthy ? 'healthy' : 'unhealthy'}`;
  refs.phase.textContent = app.phase;
  refs.phase.className = `badge ${app.phase}`;
  refs.phase.hidden = app.phase === 'serving';
  refs.reasons.textContent = app.reasons.join('; ');
  refs.reasons.hidden = app.reasons.length === 0;
  refs.release.textContent = app.activeRelease ?? '–';
  refs.queue.textContent = String(app.queue);
  refs.rate.textContent = typeof app.requestRate === 'number' ? app.requestRate.toFixed(1) : '–';
  refs.db.textContent = app.db.budget === null ? `${app.db.inUse}` : `${app.db.inUse} / ${app.db.budget}`;
  // A select the user is on keeps their choice; otherwise it follows the app's mode.
  if (refs.select && document.activeElement !== refs.select) refs.select.value = app.mode;
  const rows = [];
  for (const gen of app.generations) {
    for (const inst of gen.instances) {
      rows.push(
        el(
          'tr',
          { 'data-pid': inst.pid ?? '' },
          el('td', { text: `${inst.process}.${inst.index}` }),
          el('td', { text: `${gen.id}${gen.active ? ' (active)' : ` (${gen.state})`}`, title: `release ${gen.releaseId}` }),
          el('td', { text: inst.busy ? `${inst.state} (busy)` : inst.state }),
          el('td', { text: inst.pid ?? '–' }),
          el('td', { text: String(inst.inFlight) }),
          el('td', { text: String(inst.served) }),
          el('td', { text: bytes(inst.rssBytes) }),
          el('td', { text: duration(inst.uptimeMs) }),
        ),
      );
    }
  }
  refs.rows.replaceChildren(...rows);
}

// ---- deploys --------------------------------------------------------------------------------------

function deployCard(d) {
  let card = state.deploys.get(d.id);
  if (card) return card;
  const badge = el('span', { class: 'badge running', text: 'running' });
  const list = el('ol', { 'aria-label': `Steps of ${d.kind} ${d.id}` });
  const root = el('article', { class: 'deploy', 'data-deploy': d.id, 'data-app': d.app }, el('h3', {}, `${d.kind} ${d.app} `, badge), el('p', { class: 'muted', text: `${d.id}${d.user ? ` by ${d.user}` : ''}` }), list);
  card = { root, list, badge, steps: new Map() };
  state.deploys.set(d.id, card);
  $('no-deploys').hidden = true;
  $('deploys').prepend(root);
  while (state.deploys.size > DEPLOYS_SHOWN) {
    const [oldest, old] = state.deploys.entries().next().value;
    old.root.remove();
    state.deploys.delete(oldest);
  }
  return card;
}

function renderDeployEvent(d) {
  const card = deployCard(d);
  const e = d.event;
  let li = card.steps.get(e.step);
  if (!li) {
    li = el('li', { 'data-step': e.step });
    card.steps.set(e.step, li);
    card.list.append(li);
  }
  li.dataset.status = e.status;
  li.replaceChildren(
    el('span', { class: 'step', text: e.step }),
    ' ',
    el('span', { class: `badge ${e.status}`, text: e.status }),
    e.durationMs !== null && e.durationMs !== undefined ? ` ${duration(e.durationMs)}` : '',
    e.message ? el('span', { class: 'msg', text: ` ${e.message.split('\n')[0]}` }) : '',
  );
}

function renderDeployEnd(d) {
  const card = deployCard(d);
  const st = d.deploy.state;
  card.badge.textContent = st;
  card.badge.className = `badge ${st}`;
  card.root.dataset.state = st;
  if (st !== 'succeeded' && d.deploy.error) card.root.append(el('p', { class: 'error', text: `${d.deploy.failedStep ? `failed at ${d.deploy.failedStep}: ` : ''}${d.deploy.error.split('\n')[0]}` }));
}

// ---- history --------------------------------------------------------------------------------------

async function refreshHistory() {
  if (!state.who) return;
  try {
    const { history } = await api('GET', 'v1/history?limit=50');
    $('history').tBodies[0].replaceChildren(
      ...history.map((h) =>
        el(
          'tr',
          { 'data-action': h.action, 'data-outcome': h.outcome },
          el('td', { text: time(h.at) }),
          el('td', { text: h.node ?? '–' }),
          el('td', { text: h.app ?? '–' }),
          el('td', { text: h.action }),
          el('td', { text: h.user }),
          el('td', { text: h.channel }),
          el('td', {}, el('span', { class: `badge ${h.outcome}`, text: h.outcome })),
          el('td', { class: 'wrap', text: h.detail ?? h.target ?? '' }),
        ),
      ),
    );
  } catch (err) {
    if (err.status === 401) showLogin('Your session has ended; log in again.');
  }
}

// ---- fleet ----------------------------------------------------------------------------------------

/** The nodes on this gateway's database (shown only for a fleet: a gateway on SQLite is alone). */
async function refreshFleet() {
  if (!state.who) return;
  try {
    const fleet = await api('GET', 'v1/fleet');
    $('fleet-section').hidden = !fleet.fleet;
    if (!fleet.fleet) return;
    $('fleet').tBodies[0].replaceChildren(
      ...fleet.nodes.map((n) =>
        el(
          'tr',
          { 'data-node': n.node, 'data-state': n.state },
          el('td', { text: n.self ? `${n.node} (this node)` : n.node }),
          el('td', {}, el('span', { class: `badge ${n.state === 'running' ? 'ok' : n.state === 'lost' ? 'failed' : 'refused'}`, text: n.state })),
          el('td', { text: `${duration(n.heartbeatAgeMs)} ago` }),
          el('td', { text: n.state !== 'running' ? '–' : n.converged ? 'yes' : 'no' }),
          el('td', { class: 'wrap', text: n.apps.map((a) => `${a.app} ${a.release ?? '–'} ${a.mode}${a.error ? ` (${a.error})` : ''}`).join('; ') }),
        ),
      ),
    );
  } catch (err) {
    if (err.status === 401) showLogin('Your session has ended; log in again.');
    // The store may be away (503): the table keeps what it last showed.
  }
}

// ---- config reload --------------------------------------------------------------------------------

async function reloadConfig(event) {
  const button = event.currentTarget;
  if (!(await confirmAction('Reload the config?', 'The gateway re-reads its config file and applies it; apps whose processes changed are reloaded with zero downtime.'))) return;
  button.disabled = true;
  try {
    const result = await api('POST', 'v1/config/reload', {});
    notice(`Config reloaded: ${result.summary}.`, 'info');
    refreshHistory();
  } catch (err) {
    notice(err.message);
  } finally {
    button.disabled = false;
  }
}

// ---- boot -----------------------------------------------------------------------------------------

async function boot() {
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', logout);
  $('reload-config').addEventListener('click', reloadConfig);
  // How this page is reached decides whether credentials are needed before asking the API anything.
  const session = await fetch('ui/session.json', { cache: 'no-store' }).then((r) => r.json());
  if (session.login === 'token' && !state.token) return showLogin();
  try {
    await start();
  } catch (err) {
    if (err.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      state.token = null;
      showLogin(session.login === 'none' ? '' : 'Log in with a token.');
    } else notice(`Cannot reach the gateway: ${err.message}`);
  }
}

boot().catch((err) => notice(`The dashboard failed to start: ${err.message}`));
