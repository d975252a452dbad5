/**
 * The web dashboard end to end in headless Chromium (Debian's `chromium`, driven by playwright-core):
 * log in with a token on the TCP control API, see both apps, start a reload and watch its steps arrive
 * live, switch an app to maintenance and see the front door answer 503. Any console error fails it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { hashToken } from '../../src/api/auth.ts';
import { FIXTURE_WEB_COMMAND, fixtureApp, http, spawnGateway, tempDir, waitFor, writeConfig } from '../helpers/gateway.ts';
import { spawnDashboard } from '../helpers/dashboard.ts';

const CHROMIUM = '/usr/bin/chromium';
const hasChromium = existsSync(CHROMIUM);
// Under CI the browser must be there (.ci/run installs it); elsewhere its absence is a visible skip.
const skip = !hasChromium && process.env.CI !== 'true' ? `${CHROMIUM} is not installed (apt-get install chromium)` : false;

const DEPLOYER_TOKEN = 'deployer-token-for-the-dashboard';
const VIEWER_TOKEN = 'viewer-token-for-the-dashboard';

async function launch(dir: string): Promise<BrowserContext> {
  const profile = join(dir, 'chromium-profile');
  await mkdir(profile);
  return chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/** The context's page, with every console error and uncaught page error it shows collected in `errors`. */
async function watchedPage(context: BrowserContext): Promise<{ page: Page; errors: string[] }> {
  const page = context.pages()[0] ?? (await context.newPage());
  const errors: string[] = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(msg.text());
  });
  page.on('pageerror', (err) => errors.push(err.message));
  return { page, errors };
}

async function logIn(page: Page, token: string): Promise<void> {
  await page.getByLabel('Control API token').fill(token);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.locator('#dashboard').waitFor({ state: 'visible' });
}

test('dashboard: log in, see both apps live, reload with steps streaming, switch to maintenance', { skip, timeout: 120_000 }, async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const app = (host: string, command: string) => ({
    source: src,
    hosts: [host],
    processes: { web: { command, instances: 1, concurrency: 8 } },
    health: { path: '/up', interval: '250ms' },
    timeouts: { drain: '5s', stop: '5s' },
  });
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    control: {
      listen: '127.0.0.1:0',
      tokens: { ops: { hash: hashToken(DEPLOYER_TOKEN), roles: ['deployer'] }, watcher: { hash: hashToken(VIEWER_TOKEN), roles: ['viewer'] } },
    },
    apps: {
      // Shop takes a moment to start, so a reload's steps are spread out in time.
      shop: app('shop.test', `sleep 0.7; exec ${FIXTURE_WEB_COMMAND}`),
      blog: app('blog.test', FIXTURE_WEB_COMMAND),
    },
  });
  const gw = await spawnGateway(t, file);
  const controlListen: string = (await gw.api('/v1/status')).controlListen;
  await waitFor(async () => (await http({ port: gw.port }, { path: '/_berth/ready' })).status === 200, { timeoutMs: 30_000, message: 'both apps ready' });

  const context = await launch(dir);
  t.after(() => context.close());
  const { page, errors } = await watchedPage(context);
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.goto(`http://${controlListen}/`);

  // Without a token: the login form, and nothing else.
  await page.getByLabel('Control API token').waitFor();
  assert.equal(await page.locator('#dashboard').isVisible(), false);

  // A viewer sees the apps but no buttons that change them.
  await logIn(page, VIEWER_TOKEN);
  await page.locator('article.app[data-app="shop"]').waitFor();
  await page.locator('article.app[data-app="blog"]').waitFor();
  assert.equal(await page.getByRole('button', { name: 'Reload shop' }).count(), 0);
  assert.equal(await page.getByRole('button', { name: 'Switch mode of shop' }).count(), 0);
  await page.getByRole('button', { name: 'Log out' }).click();
  await page.getByLabel('Control API token').waitFor();

  // The deployer: both apps with their instances (pid, state...), updated live.
  await logIn(page, DEPLOYER_TOKEN);
  assert.match((await page.locator('#whoami').textContent()) ?? '', /ops \(deployer\)/);
  const shop = page.locator('article.app[data-app="shop"]');
  const blog = page.locator('article.app[data-app="blog"]');
  const shopStatus = await gw.api('/v1/apps/shop');
  const shopPid = shopStatus.generations[0].instances[0].pid;
  await shop.locator(`tr[data-pid="${shopPid}"]`).waitFor();
  assert.match((await shop.locator(`tr[data-pid="${shopPid}"]`).textContent()) ?? '', /web\.0.*ready/);
  assert.match((await shop.textContent()) ?? '', new RegExp(shopStatus.activeRelease));
  await blog.locator('tr[data-pid]').first().waitFor();
  assert.equal(await shop.locator('.badge').first().textContent(), 'normal');
  // Keyboard: the reload button is a real button; Enter asks for confirmation and Escape cancels it.
  await page.getByRole('button', { name: 'Reload blog' }).focus();
  await page.keyboard.press('Enter');
  await page.locator('dialog#confirm[open]').waitFor();
  await page.keyboard.press('Escape');
  await page.locator('dialog#confirm[open]').waitFor({ state: 'detached' });
  const reloads = async () => (await gw.api('/v1/apps/blog/deploys')).deploys.filter((d: { kind: string }) => d.kind === 'reload').length;
  assert.equal(await reloads(), 0, 'a cancelled reload does not start');

  // Record every step as it lands in the page, with when it landed.
  // (Browser code as a string: this file is type-checked without the DOM library.)
  await page.evaluate(`(() => {
    const seen = (window.seenSteps = []);
    new MutationObserver(() => {
      for (const li of document.querySelectorAll('#deploys li[data-step]')) {
        const key = li.dataset.step + ':' + li.dataset.status;
        if (!seen.some((s) => s.step + ':' + s.status === key)) seen.push({ step: li.dataset.step, status: li.dataset.status, at: performance.now() });
      }
    }).observe(document.getElementById('deploys'), { subtree: true, childList: true, attributes: true });
  })()`);
  await page.getByRole('button', { name: 'Reload shop' }).click();
  await page.getByRole('button', { name: 'Confirm' }).click();
  const deployCard = page.locator('article.deploy[data-app="shop"]');
  await deployCard.locator('li[data-step="start"]').waitFor({ timeout: 30_000 });
  await page.locator('article.deploy[data-app="shop"][data-state="succeeded"]').waitFor({ timeout: 60_000 });
  const steps = (await page.evaluate('window.seenSteps')) as { step: string; status: string; at: number }[];
  const at = (key: string) => steps.find((s) => `${s.step}:${s.status}` === key)?.at;
  assert.ok(at('start:succeeded') !== undefined && at('switch:succeeded') !== undefined && at('stop_old:succeeded') !== undefined, JSON.stringify(steps));
  // Live: the instances became healthy (>= 0.7s) after the start step showed, and the switch came after.
  assert.ok(at('switch:succeeded')! - at('start:succeeded')! >= 500, JSON.stringify(steps));
  assert.ok(at('wait_healthy:started')! < at('wait_healthy:succeeded')!, JSON.stringify(steps));
  const newPid = await waitFor(async () => {
    const a = await gw.api('/v1/apps/shop');
    const g = a.generations.find((x: any) => x.active);
    return a.generations.length === 1 && g.instances[0].pid !== shopPid ? g.instances[0].pid : null;
  }, { message: 'the reloaded shop' });
  await shop.locator(`tr[data-pid="${newPid}"]`).waitFor();

  // Maintenance from the UI, with confirmation; the front door answers 503 at once.
  assert.equal((await http({ port: gw.port }, { host: 'shop.test', path: '/' })).status, 200);
  await shop.getByLabel('Mode', { exact: true }).selectOption('maintenance');
  await page.getByRole('button', { name: 'Switch mode of shop' }).click();
  await page.getByRole('button', { name: 'Confirm' }).click();
  await page.getByText('shop is now in maintenance mode.').waitFor();
  await shop.locator('.badge.maintenance').waitFor();
  const front = await http({ port: gw.port }, { host: 'shop.test', path: '/' });
  assert.equal(front.status, 503);
  assert.equal((await http({ port: gw.port }, { host: 'blog.test', path: '/' })).status, 200);

  // The history (refreshed after each change from the page) shows both changes by the token's user.
  const history = page.locator('#history tbody');
  await history.locator('tr[data-action="mode"]').waitFor();
  await history.locator('tr[data-action="reload"][data-outcome="ok"]').waitFor();
  assert.match((await history.locator('tr[data-action="mode"]').first().textContent()) ?? '', /shop.*mode.*ops.*tcp.*ok/);

  const shot = join(dir, 'dashboard.png');
  await page.screenshot({ path: shot, fullPage: true });
  assert.ok((await stat(shot)).size > 10_000);
  // Readable on a phone: nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  const overflow = (await page.evaluate('document.documentElement.scrollWidth - window.innerWidth')) as number;
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone screen`);
  await page.screenshot({ path: join(dir, 'dashboard-phone.png'), fullPage: true });

  assert.deepEqual(errors, []);
  await context.close();
});

test('berth dashboard: the printed one-time URL opens the dashboard in the browser; the clean URL without its cookie is 401', { skip, timeout: 120_000 }, async (t) => {
  const dir = await tempDir(t);
  const src = await fixtureApp(dir);
  const file = await writeConfig(dir, {
    state_dir: 'state',
    listen: ['127.0.0.1:0'],
    log_levels: { root: 'warn' },
    apps: { shop: { source: src, hosts: ['shop.test'], processes: { web: { command: FIXTURE_WEB_COMMAND } }, health: { path: '/up', interval: '250ms' } } },
  });
  const gw = await spawnGateway(t, file);
  await waitFor(async () => (await http({ port: gw.port }, { path: '/_berth/ready' })).status === 200, { timeoutMs: 30_000, message: 'shop ready' });
  const dash = spawnDashboard(t, gw.socket);
  const printed = await waitFor(() => /^dashboard: (\S+)/m.exec(dash.output())?.[1], { message: 'the dashboard URL' });
  assert.match(printed, /\?token=/);

  const context = await launch(dir);
  t.after(() => context.close());
  const { page, errors } = await watchedPage(context);
  await page.goto(printed);
  // No login form: the socket is admin. The secret is gone from the address bar.
  await page.locator('#dashboard').waitFor({ state: 'visible' });
  await page.locator('article.app[data-app="shop"] tr[data-pid]').first().waitFor();
  assert.match((await page.locator('#whoami').textContent()) ?? '', /dash-user/);
  const clean = page.url();
  assert.equal(clean, printed.replace(/\?token=.*$/, ''));
  // A reload keeps working on the session cookie.
  await page.reload();
  await page.locator('article.app[data-app="shop"]').waitFor();
  assert.deepEqual(errors, []);

  // Another browser (no cookie) at the clean URL, or at the spent one-time URL: 401.
  const other = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--headless', '--no-sandbox', '--disable-gpu'] });
  t.after(() => other.close());
  const stranger = await other.newPage();
  assert.equal((await stranger.goto(clean))?.status(), 401);
  assert.equal((await stranger.goto(printed))?.status(), 401);
  assert.equal(await stranger.locator('#dashboard').count(), 0);
  await other.close();
  await context.close();
  assert.equal(await dash.stop(), 0);
});
