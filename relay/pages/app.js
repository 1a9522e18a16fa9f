// The user app, what the user's phone shows: accept the invitation, then
// a live feed of everything that happens on their security key (pushed
// over a WebSocket; the durable inbox fills in what a phone missed while
// offline), one-tap answers to what waits for them, and their passkeys.
// The device token lives in this browser's localStorage only.
'use strict';

const { h, call, when, say, clear } = obr;
const DEVICE = 'obr.device.token';
const DECIDED = 'obr.decided';
const device = () => localStorage.getItem(DEVICE);
const view = document.getElementById('view');
const inbox = [];
let socket = null;
let retry = 500;

function decided() {
  try { return new Set(JSON.parse(localStorage.getItem(DECIDED) || '[]')); } catch (_) { return new Set(); }
}

function remember(key) {
  const all = decided();
  all.add(key);
  localStorage.setItem(DECIDED, JSON.stringify([...all].slice(-200)));
}

// ----- before: the invitation -----
function welcome() {
  clear(view);
  const fromLink = (location.hash.match(/^#invite=([A-Za-z0-9_-]+)$/) || [])[1];
  const form = h('form', { class: 'card', id: 'accept-form' },
    h('h2', { text: 'Accept your invitation' }),
    h('p', { text: 'Your IT team invited you to obr: your security key will live in the cloud, and this app tells you whenever anyone uses it.' }),
    fromLink ? null : [h('label', { for: 'invitation', text: 'Invitation code (from the e-mail)' }),
      h('input', { id: 'invitation', name: 'invitation', autocomplete: 'off', required: true })],
    h('div', { class: 'row' }, h('button', { type: 'submit', id: 'accept', text: 'Accept' })));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const invitation = fromLink || new FormData(form).get('invitation');
    try {
      const answer = await call('POST', '/api/invitations/accept', null, { token: invitation });
      localStorage.setItem(DEVICE, answer.device_token);
      history.replaceState(null, '', '/app/');
      say('Welcome, ' + answer.user.display_name + ': your security key is active.');
      home();
    } catch (error) {
      say(error.message, true);
    }
  });
  view.append(form);
}

// ----- after: the feed -----
function home() {
  clear(view);
  view.append(
    h('section', { 'aria-labelledby': 'feed-title' },
      h('h2', { id: 'feed-title', text: 'What happened on your key' }),
      h('div', { id: 'feed', 'aria-live': 'polite' }, h('p', { class: 'muted', text: 'Nothing yet.' }))),
    h('section', { 'aria-labelledby': 'keys-title' },
      h('h2', { id: 'keys-title', text: 'Your passkeys' }),
      h('div', { id: 'passkeys' }, h('p', { class: 'muted', text: 'Loading…' }))),
    h('div', { class: 'row' }, h('button', { type: 'button', class: 'secondary', text: 'Forget this phone',
      onclick: () => { localStorage.removeItem(DEVICE); if (socket) socket.close(); welcome(); } })));
  connect();
  passkeys();
}

function connect() {
  if (!device()) return;
  const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
  socket = new WebSocket(scheme + location.host + '/api/me/live');
  const live = document.getElementById('live');
  socket.addEventListener('open', () => {
    const after = inbox.length ? inbox[inbox.length - 1].id : 0;
    socket.send(JSON.stringify({ token: device(), after }));
    live.textContent = 'live';
    retry = 500;
  });
  socket.addEventListener('message', (event) => {
    const data = JSON.parse(event.data);
    for (const n of data.notifications || []) inbox.push(n);
    render();
    if ((data.notifications || []).some((n) => n.kind === 'obr.registration' || n.kind === 'passkey.deleted')) passkeys();
  });
  socket.addEventListener('close', (event) => {
    live.textContent = 'offline';
    // 1008: the token is unknown or revoked. Anything else (the relay
    // restarting, its directory not answering, too many feeds): retry.
    if (event.code === 1008) {
      say('This phone is no longer signed in: accept a new invitation.', true);
      localStorage.removeItem(DEVICE);
      welcome();
      return;
    }
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 15000);
  });
}

// What a notification asks the user to decide, if anything.
function question(n) {
  if (n.kind === 'approval.requested' && n.detail && n.detail.approval_id) {
    return { key: 'approval:' + n.detail.approval_id, path: '/api/me/approvals/' + n.detail.approval_id };
  }
  if (n.kind === 'obr.approval_requested' && n.detail && n.detail.session) {
    return { key: 'obr:' + n.detail.session, path: '/api/me/obr-sessions/' + n.detail.session + '/decision' };
  }
  return null;
}

function render() {
  const feed = document.getElementById('feed');
  if (!feed) return;
  clear(feed);
  const done = decided();
  for (const n of inbox.slice().reverse()) {
    const ask = question(n);
    const open = ask && !done.has(ask.key);
    const sites = n.detail && Array.isArray(n.detail.rp_ids) && n.detail.rp_ids.length
      ? 'Only for: ' + n.detail.rp_ids.join(', ') : null;
    const until = open && n.detail && n.detail.expires_at_ms ? 'Until ' + when(n.detail.expires_at_ms) : null;
    feed.append(h('article', { class: open ? 'notice ask' : 'notice', 'data-kind': n.kind },
      h('p', { text: n.message }),
      open && sites ? h('p', { text: sites }) : null,
      until ? h('p', { text: until }) : null,
      h('p', { class: 'muted', text: when(n.at_ms) }),
      open ? h('div', { class: 'row' },
        h('button', { type: 'button', text: 'Approve', onclick: () => decide(ask, true) }),
        h('button', { type: 'button', class: 'danger', text: 'Deny', onclick: () => decide(ask, false) })) : null));
  }
  if (!inbox.length) feed.append(h('p', { class: 'muted', text: 'Nothing yet.' }));
}

async function decide(ask, approve) {
  try {
    await call('POST', ask.path, device(), { approve });
    say(approve ? 'Approved.' : 'Denied.');
  } catch (error) {
    if (error.status !== 404) { say(error.message, true); return; }
    say('Too late: it was decided or expired.', true);
  }
  remember(ask.key);
  render();
}

async function passkeys() {
  const panel = document.getElementById('passkeys');
  if (!panel) return;
  try {
    const keys = await call('GET', '/api/me/passkeys', device());
    clear(panel);
    panel.append(keys.length
      ? h('ul', {}, keys.map((k) => h('li', {}, h('strong', { text: k.rp_id }), ' · ' + k.user_name +
          ' · created ' + when(k.created_at_ms) + (k.created_by ? ' by ' + k.created_by : ''))))
      : h('p', { class: 'muted', text: 'No passkeys yet.' }));
  } catch (error) {
    say(error.message, true);
  }
}

if (device()) home(); else welcome();
