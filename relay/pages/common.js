// Shared by the admin panel and the user app. Builds the DOM with
// textContent only (never innerHTML): nothing a server or user wrote can
// become markup or script.
'use strict';

const obr = {};

// h('tag', {attr: value, onclick: fn}, child, 'text', ...)
obr.h = (tag, attrs, ...children) => {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else if (name === 'text') node.textContent = value;
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
};

// JSON over the relay's API with a bearer token; throws {status, error, message}.
obr.call = async (method, path, token, body) => {
  const headers = { 'Accept': 'application/json' };
  if (token) headers['Authorization'] = 'Bearer ' + token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'omit', cache: 'no-store',
  });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = { message: text }; }
  if (!response.ok) {
    const error = new Error((data && data.message) || ('HTTP ' + response.status));
    error.status = response.status;
    error.code = data && data.error;
    throw error;
  }
  return data;
};

obr.when = (ms) => ms ? new Date(ms).toLocaleString() : '—';

// Announce `text` to people and screen readers (the #status live region).
obr.say = (text, isError) => {
  const status = document.getElementById('status');
  status.textContent = text;
  status.className = isError ? 'status error' : 'status';
};

obr.clear = (node) => { while (node.firstChild) node.firstChild.remove(); };
