// The admin panel: sign in (password and TOTP), Users & Security Keys, a
// user's page (Action → Select as OBR, Done, Cancel; the Passkeys tab),
// agents, approving an agent's login code, the audit log, and one's own
// sessions. Every action is a call to /api/*; the token lives in this
// tab's sessionStorage only.
'use strict';

const { h, call, when, say, clear } = obr;
const view = () => document.getElementById('view');
const TOKEN = 'obr.admin.token';
const EMAIL = 'obr.admin.email';
const token = () => sessionStorage.getItem(TOKEN);

async function api(method, path, body) {
  try {
    return await call(method, path, token(), body);
  } catch (error) {
    if (error.status === 401 && path !== '/api/admin/login') {
      sessionStorage.removeItem(TOKEN);
      say('Your session ended: sign in again.', true);
      location.hash = '#signin';
    }
    throw error;
  }
}

// Run `work`; say what went wrong if it throws.
async function attempt(work) {
  try {
    await work();
  } catch (error) {
    say(error.message, true);
  }
}

function show(title, ...content) {
  const root = view();
  clear(root);
  root.append(h('h2', { text: title }), ...content);
  document.title = title + ' — obr admin panel';
  root.focus();
}

function field(label, attrs) {
  const id = 'f-' + attrs.name;
  return [h('label', { for: id, text: label }), h('input', { id, ...attrs })];
}

// ----- sign in -----
function signIn() {
  document.getElementById('nav').hidden = true;
  document.getElementById('who').textContent = '';
  const form = h('form', { class: 'card', id: 'signin-form' },
    field('Email', { name: 'email', type: 'email', autocomplete: 'username', required: true }),
    field('Password', { name: 'password', type: 'password', autocomplete: 'current-password', required: true }),
    field('One-time code from your authenticator app', {
      name: 'totp', inputmode: 'numeric', autocomplete: 'one-time-code', pattern: '[0-9]{6}',
      maxlength: 6, required: true,
    }),
    h('div', { class: 'row' }, h('button', { type: 'submit', id: 'signin', text: 'Sign in' })));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const data = new FormData(form);
    attempt(async () => {
      const answer = await api('POST', '/api/admin/login', {
        email: data.get('email'), password: data.get('password'), totp: data.get('totp'),
      });
      sessionStorage.setItem(TOKEN, answer.token);
      sessionStorage.setItem(EMAIL, data.get('email'));
      say('Signed in.');
      if (location.hash === '#signin' || !location.hash) location.hash = '#users';
      else route();
    });
  });
  show('Sign in', form);
}

// ----- users -----
async function users() {
  const people = await api('GET', '/api/users');
  const rows = people.map((p) => h('tr', {},
    h('td', {}, p.is_admin ? p.display_name : h('a', { href: '#user/' + p.id, text: p.display_name })),
    h('td', { text: p.email }),
    h('td', {}, h('span', { class: 'pill ' + p.key_status, text: p.key_status })),
    h('td', { class: 'wide', text: p.is_admin ? 'admin' : (p.groups || []).join(', ') })));
  const invite = h('form', { class: 'card', id: 'invite-form' },
    h('h3', { text: 'Invite a user' }),
    field('Email', { name: 'email', type: 'email', required: true }),
    field('Name', { name: 'display_name', required: true }),
    h('div', { class: 'row' }, h('button', { type: 'submit', text: 'Invite' })));
  invite.addEventListener('submit', (event) => {
    event.preventDefault();
    const data = new FormData(invite);
    attempt(async () => {
      const answer = await api('POST', '/api/users', {
        email: data.get('email'), display_name: data.get('display_name'),
      });
      say('Invitation sent to ' + answer.invitation_sent_to + '.');
      users();
    });
  });
  const importForm = h('form', { class: 'card', id: 'import-form' },
    h('h3', { text: 'Import users from CSV' }),
    h('p', { class: 'muted', text: 'A header row naming email and display_name (and optionally groups, separated by ;). Each user gets their invitation by mail.' }),
    h('label', { for: 'f-csv', text: 'CSV file' }),
    h('input', { id: 'f-csv', name: 'csv', type: 'file', accept: '.csv,text/csv', required: true }),
    h('div', { class: 'row' }, h('button', { type: 'submit', text: 'Import' })),
    h('div', { id: 'import-report' }));
  importForm.addEventListener('submit', (event) => {
    event.preventDefault();
    const file = importForm.querySelector('#f-csv').files[0];
    if (!file) return;
    attempt(async () => {
      const response = await fetch('/api/users/import', {
        method: 'POST', body: await file.text(), credentials: 'omit', cache: 'no-store',
        headers: { Authorization: 'Bearer ' + token(), 'Content-Type': 'text/csv' },
      });
      const report = await response.json();
      if (!response.ok) throw new Error(report.message || 'import failed');
      say('Imported: ' + report.invited + ' invited, ' + report.failed + ' failed.');
      const box = document.getElementById('import-report');
      clear(box);
      box.append(h('table', {},
        h('thead', {}, h('tr', {}, ['Line', 'Email', 'Result'].map((t) => h('th', { scope: 'col', text: t })))),
        h('tbody', {}, report.rows.map((r) => h('tr', {}, h('td', { text: r.line }), h('td', { text: r.email }),
          h('td', { text: r.status === 'invited' ? 'invited' : 'failed: ' + r.error }))))));
    });
  });
  show('Users & Security Keys',
    h('section', {}, h('table', {},
      h('caption', { class: 'sr-only', text: 'Users and the status of their security key' }),
      h('thead', {}, h('tr', {}, ['Name', 'Email', 'Security key', 'Groups'].map((t, i) =>
        h('th', { scope: 'col', class: i === 3 ? 'wide' : null, text: t })))),
      h('tbody', {}, rows))),
    invite, importForm);
}

// ----- one user -----
async function user(id) {
  const people = await api('GET', '/api/users');
  const person = people.find((p) => p.id === id);
  if (!person) { show('No such user', h('p', { text: 'This user does not exist.' })); return; }
  const agents = await api('GET', '/api/agents');
  const active = agents.find((a) => a.obr && a.obr.user_id === id);
  const obrBox = h('section', { id: 'obr', 'aria-labelledby': 'obr-title' },
    h('h3', { id: 'obr-title', text: 'On behalf registration' }));
  if (active) {
    const session = active.obr;
    obrBox.append(
      h('p', { id: 'obr-state', text: session.awaiting
        ? 'Waiting for ' + (session.awaiting === 'user' ? person.email : 'a second admin') + ' to approve.'
        : 'Selected as OBR: agent ' + active.agent_id + ' acts for ' + person.email + ' until ' + when(session.expires_at_ms) + '.' }),
      session.policy && session.policy.rp_ids && session.policy.rp_ids.length
        ? h('p', { class: 'muted', text: 'Only for ' + session.policy.rp_ids.join(', ') }) : null,
      h('div', { class: 'row' },
        h('button', { type: 'button', id: 'done', text: 'Done', onclick: () => endObr(active.agent_id, id, 'Done') }),
        h('button', { type: 'button', class: 'secondary', id: 'cancel', text: 'Cancel',
          onclick: () => endObr(active.agent_id, id, 'Cancelled') })));
  } else {
    obrBox.append(selectForm(person));
  }
  const tabs = h('div', { class: 'tabs', role: 'tablist' },
    h('button', { type: 'button', role: 'tab', 'aria-selected': 'true', 'aria-controls': 'passkeys', text: 'Passkeys' }));
  const passkeys = h('section', { id: 'passkeys', role: 'tabpanel' }, h('p', { class: 'muted', text: 'Loading…' }));
  show(person.display_name,
    h('p', {}, person.email, ' · security key ', h('span', { class: 'pill ' + person.key_status, text: person.key_status })),
    obrBox, tabs, passkeys);
  await listPasskeys(person, passkeys);
}

function selectForm(person) {
  const form = h('form', { id: 'select-form' },
    h('details', {}, h('summary', { text: 'Action' }),
      h('p', { class: 'muted', text: 'Select as OBR: your agent acts as ' + person.email + "'s security key." }),
      field('Only these sites (RP IDs, comma-separated; empty: any)', { name: 'rp_ids', placeholder: 'login.microsoft.com' }),
      field('At most this many passkeys (empty: no limit)', { name: 'max_registrations', type: 'number', min: 1, max: 100 }),
      h('label', { for: 'f-four_eyes', text: 'Approval before it starts' }),
      h('select', { id: 'f-four_eyes', name: 'four_eyes' },
        h('option', { value: '', text: 'None' }),
        h('option', { value: 'user', text: 'The user, on their phone' }),
        h('option', { value: 'second_admin', text: 'A second admin' })),
      h('div', { class: 'row' }, h('button', { type: 'submit', id: 'select-obr', text: 'Select as OBR' }))));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const body = {};
    const rps = String(data.get('rp_ids') || '').split(',').map((s) => s.trim()).filter(Boolean);
    if (rps.length) body.rp_ids = rps;
    if (data.get('max_registrations')) body.max_registrations = Number(data.get('max_registrations'));
    if (data.get('four_eyes')) body.four_eyes = data.get('four_eyes');
    attempt(async () => {
      const session = await api('POST', '/api/users/' + person.id + '/obr', body);
      say(session.awaiting ? 'Waiting for approval.' : 'Selected as OBR: your agent now acts for ' + person.email + '.');
      user(person.id);
    });
  });
  return form;
}

async function endObr(agentId, userId, what) {
  await attempt(async () => {
    await api('DELETE', '/api/agents/' + encodeURIComponent(agentId) + '/obr');
    say(what + ': the agent is back in normal mode.');
    user(userId);
  });
}

// +Passkey → Other platforms / applications (the second seed): a pairing
// link that opens the Pairing Tool (obr-agent) on this computer, which then
// acts for the user; Done and Cancel end it.
function addPasskey(person, panel) {
  const box = h('div', { class: 'notice', id: 'add-passkey' },
    h('p', { text: 'Where will the passkey be registered?' }),
    h('div', { class: 'row' },
      h('button', { type: 'button', id: 'other-platforms', text: 'Other platforms / applications',
        onclick: () => attempt(async () => {
          const offer = await api('POST', '/api/users/' + person.id + '/pairing', {});
          clear(box);
          box.append(
            h('p', { text: 'Open the Pairing Tool: it becomes ready to register a passkey on ' + person.email + "'s behalf." }),
            h('p', {}, h('a', { id: 'pair-link', href: offer.link, text: 'Open Pairing Tool' })),
            h('p', { class: 'muted', text: 'The link works once, for your own agent, within ' + Math.round(offer.expires_in_s / 60) + ' minutes.' }),
            h('div', { class: 'row' },
              h('button', { type: 'button', class: 'secondary', id: 'pair-cancel', text: 'Cancel',
                onclick: () => user(person.id) })));
          say('Waiting for the Pairing Tool…');
          waitForPairing(person);
        }) })));
  panel.prepend(box);
}

// Until the agent took the pairing (or the page moved on): then the user's
// page shows the session with Done and Cancel.
async function waitForPairing(person) {
  const deadline = Date.now() + 5 * 60 * 1000;
  while (Date.now() < deadline && location.hash === '#user/' + person.id && document.getElementById('pair-link')) {
    const agents = await api('GET', '/api/agents');
    if (agents.some((a) => a.obr && a.obr.user_id === person.id)) {
      say('The Pairing Tool acts for ' + person.email + ': register the passkey, then press Done.');
      await user(person.id);
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

async function listPasskeys(person, panel) {
  const keys = await api('GET', '/api/users/' + person.id + '/passkeys');
  clear(panel);
  panel.append(h('div', { class: 'row' }, h('button', { type: 'button', id: 'add-passkey-button', text: '+Passkey',
    onclick: () => { if (!document.getElementById('add-passkey')) addPasskey(person, panel); } })));
  if (!keys.length) { panel.append(h('p', { id: 'no-passkeys', text: 'No passkeys on this key yet.' })); return; }
  panel.append(h('table', { id: 'passkey-table' },
    h('caption', { class: 'sr-only', text: 'Passkeys on ' + person.email + "'s key" }),
    h('thead', {}, h('tr', {}, ['Site', 'Account', 'Created', 'By', 'OBR session', 'Last used', ''].map((t, i) =>
      h('th', { scope: 'col', class: i === 4 ? 'wide' : null, text: t })))),
    h('tbody', {}, keys.map((k) => h('tr', {},
      h('td', { text: k.rp_id }), h('td', { text: k.user_name }), h('td', { text: when(k.created_at_ms) }),
      h('td', { text: k.created_by || 'the user' }),
      h('td', { class: 'wide', title: k.obr_session_id, text: k.obr_session_id ? k.obr_session_id.slice(0, 8) : '—' }),
      h('td', { text: when(k.last_used_at_ms) }),
      h('td', {}, h('button', { type: 'button', class: 'danger', 'aria-label': 'Delete passkey for ' + k.rp_id,
        text: 'Delete', onclick: () => deletePasskey(person, k) })))))));
}

async function deletePasskey(person, key) {
  if (!confirm('Delete the passkey for ' + key.rp_id + ' (' + key.user_name + ')? The user is told.')) return;
  await attempt(async () => {
    await api('DELETE', '/api/users/' + person.id + '/passkeys/' + encodeURIComponent(key.credential_id));
    say('Passkey deleted.');
    user(person.id);
  });
}

// ----- agents and their login codes -----
async function agents() {
  const list = await api('GET', '/api/agents');
  show('Agents',
    list.length ? h('table', {},
      h('thead', {}, h('tr', {}, ['Agent', 'Connected here', 'Acting for', ''].map((t) => h('th', { scope: 'col', text: t })))),
      h('tbody', {}, list.map((a) => h('tr', {},
        h('td', { text: a.agent_id }), h('td', { text: a.connected_here ? 'yes' : 'no' }),
        h('td', { text: a.obr ? a.obr.user_email + (a.obr.awaiting ? ' (awaiting approval)' : '') : 'normal mode' }),
        h('td', {}, h('button', { type: 'button', class: 'secondary', text: 'Log out',
          onclick: () => attempt(async () => {
            await api('DELETE', '/api/agents/' + encodeURIComponent(a.agent_id) + '/login');
            say('Agent logged out.');
            agents();
          }) }))))))
      : h('p', { text: 'No agent is logged in as you. Run obr-agent login, then approve its code.' }),
    h('p', {}, h('a', { href: '#approve', text: 'Approve an agent login code' })));
}

// The code is typed, never taken from the link: someone else's agent must
// not be approved by following their link (RFC 8628 §5.4).
function approve() {
  const form = h('form', { class: 'card', id: 'approve-form' },
    h('p', { text: 'Type the code your own obr agent shows (obr-agent login). Approve only a code you see on your own screen.' }),
    field('Code', { name: 'user_code', autocomplete: 'off', required: true }),
    h('div', { class: 'row' }, h('button', { type: 'submit', text: 'Approve' })));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const data = new FormData(form);
    attempt(async () => {
      const answer = await api('POST', '/api/agent-logins/approve', { user_code: data.get('user_code') });
      say('Agent ' + answer.agent_id + ' is logged in as ' + answer.principal + '.');
      location.hash = '#agents';
    });
  });
  show('Approve an agent', form);
}

// ----- audit -----
const AUDIT_FIELDS = [['actor', 'Actor'], ['subject', 'User or subject'], ['action', 'Action (or family: obr)'], ['rp_id', 'Site (RP ID)']];

async function audit(query) {
  const params = new URLSearchParams(query || '');
  const answer = await api('GET', '/api/audit?' + params.toString());
  const records = answer.records.slice().reverse();
  const form = h('form', { class: 'card', id: 'audit-form' },
    AUDIT_FIELDS.map(([name, label]) => field(label, { name, value: params.get(name) || '' })),
    h('div', { class: 'row' }, h('button', { type: 'submit', text: 'Search' }),
      h('button', { type: 'button', class: 'secondary', id: 'audit-export', text: 'Export JSON lines',
        onclick: () => exportAudit(params) })));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [name] of AUDIT_FIELDS) {
      const value = String(new FormData(form).get(name) || '').trim();
      if (value) next.set(name, value);
    }
    attempt(() => audit(next.toString()));
  });
  const filter = h('input', { id: 'audit-filter', type: 'search', placeholder: 'any text in these records' });
  const body = h('tbody');
  const render = () => {
    const needle = filter.value.trim().toLowerCase();
    clear(body);
    for (const r of records) {
      const text = [r.actor, r.action, r.subject, JSON.stringify(r.detail)].join(' ').toLowerCase();
      if (needle && !text.includes(needle)) continue;
      body.append(h('tr', {}, h('td', { text: when(r.at_ms) }), h('td', { text: r.actor }),
        h('td', { text: r.action }), h('td', { text: r.subject }),
        h('td', { class: 'wide', text: typeof r.detail === 'string' ? r.detail : JSON.stringify(r.detail) })));
    }
  };
  filter.addEventListener('input', render);
  show('Audit log',
    h('p', { text: answer.chain_intact ? 'The hash chain is intact.' : 'The hash chain is BROKEN at record ' + answer.chain_broken_at + '.' }),
    form,
    h('label', { for: 'audit-filter', text: 'Narrow down' }), filter,
    h('table', {}, h('thead', {}, h('tr', {}, ['When', 'Actor', 'Action', 'Subject', 'Detail'].map((t, i) =>
      h('th', { scope: 'col', class: i === 4 ? 'wide' : null, text: t })))), body));
  render();
}

// Download what the filters select as JSON lines (the token goes in a
// header, so this is a fetch and a blob, not a link).
async function exportAudit(params) {
  await attempt(async () => {
    const response = await fetch('/api/audit/export?' + params.toString(), {
      headers: { Authorization: 'Bearer ' + token() }, credentials: 'omit', cache: 'no-store',
    });
    if (!response.ok) throw new Error('export failed: HTTP ' + response.status);
    const url = URL.createObjectURL(await response.blob());
    const link = h('a', { href: url, download: 'obr-audit.jsonl' });
    document.body.append(link);
    link.click();
    link.remove();
    URL.revokeObjectURL(url);
    say('Exported.');
  });
}

// ----- my sessions -----
async function sessions() {
  const mine = await api('GET', '/api/admins/me/sessions');
  show('My sessions',
    h('table', {}, h('thead', {}, h('tr', {}, ['Signed in', 'Ends', 'From', 'Browser', ''].map((t) => h('th', { scope: 'col', text: t })))),
      h('tbody', {}, mine.sessions.map((s) => h('tr', {},
        h('td', { text: when(s.created_at_ms) + (s.current ? ' (this one)' : '') }), h('td', { text: when(s.expires_at_ms) }),
        h('td', { text: s.address }), h('td', { class: 'wide', text: s.user_agent }),
        h('td', {}, h('button', { type: 'button', class: 'secondary', text: 'End',
          onclick: () => attempt(async () => {
            await api('DELETE', '/api/admins/me/sessions/' + s.id);
            say('Session ended.');
            sessions();
          }) })))))),
    h('div', { class: 'row' }, h('button', { type: 'button', class: 'danger', text: 'Sign out everywhere',
      onclick: () => attempt(async () => { await api('DELETE', '/api/admins/me/sessions'); route(); }) })));
}

// ----- routing -----
async function route() {
  const hash = location.hash || '#users';
  const [name, arg] = hash.slice(1).split(/[/=]/);
  if (!token()) {
    signIn();
    return;
  }
  document.getElementById('nav').hidden = false;
  document.getElementById('who').textContent = sessionStorage.getItem(EMAIL) || '';
  await attempt(async () => {
    switch (name) {
      case 'user': await user(arg); break;
      case 'agents': await agents(); break;
      case 'approve': approve(); break;
      case 'audit': await audit(); break;
      case 'sessions': await sessions(); break;
      default: await users();
    }
  });
}

document.getElementById('signout').addEventListener('click', () => attempt(async () => {
  await api('POST', '/api/admin/logout');
  sessionStorage.removeItem(TOKEN);
  say('Signed out.');
  location.hash = '#signin';
}));
window.addEventListener('hashchange', route);
route();
