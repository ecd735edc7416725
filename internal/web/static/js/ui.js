// Toasts and dialogs shared by the views.
import {h, $} from './dom.js';
import {ApiError} from './api.js';

// toast shows a short message; errors stay until dismissed.
export function toast(msg, kind = 'ok') {
  const box = $('#toasts');
  const close = h('button.toast-close', {type: 'button', 'aria-label': 'Dismiss'}, '×');
  const t = h('div.toast', {class: 'toast-' + kind, role: kind === 'error' ? 'alert' : null}, h('span', msg), close);
  close.addEventListener('click', () => t.remove());
  box.append(t);
  if (kind !== 'error') setTimeout(() => t.remove(), 5000);
  while (box.children.length > 4) box.firstElementChild.remove();
}

// bug reports an error that is not the server's answer (a fault of the
// page itself) as uncaught, for the console and the tests, while the
// caller goes on.
export function bug(e) {
  if (e instanceof ApiError || (e && e.name === 'AbortError')) return;
  setTimeout(() => { throw e; });
}

export function errorText(e) {
  if (!e) return '';
  let s = e.message || String(e);
  if (e.position) s += ` (${e.position})`;
  return s;
}

// Every dialog closes on its [data-close] buttons (Escape closes them
// natively).
export function wireDialogs() {
  for (const d of document.querySelectorAll('dialog')) {
    for (const b of d.querySelectorAll('[data-close]')) {
      b.addEventListener('click', () => d.close('cancel'));
    }
  }
}

function showError(el, msg) {
  el.textContent = msg || '';
  el.hidden = !msg;
}

// confirm asks a yes/no question in a modal dialog.
export function confirm(title, text, okLabel = 'OK') {
  const d = $('#confirm-dialog');
  $('#confirm-title').textContent = title;
  $('#confirm-text').textContent = text;
  $('#confirm-ok').textContent = okLabel;
  d.returnValue = '';
  return new Promise((resolve) => {
    d.addEventListener('close', () => resolve(d.returnValue === 'ok'), {once: true});
    d.showModal();
    $('#confirm-ok').focus();
  });
}

// login asks for a token until check accepts it. A login dialog cannot be
// dismissed: without a token there is nothing to show.
export function login(check) {
  const d = $('#login-dialog');
  const form = $('#login-form');
  const input = $('#login-token');
  const err = $('#login-error');
  const btn = $('#login-submit');
  showError(err, '');
  input.value = '';
  return new Promise((resolve) => {
    const cancel = (ev) => ev.preventDefault();
    const submit = async (ev) => {
      ev.preventDefault();
      const t = input.value.trim();
      if (!t) return;
      btn.disabled = true;
      try {
        const who = await check(t);
        form.removeEventListener('submit', submit);
        d.removeEventListener('cancel', cancel);
        d.close();
        resolve(who);
      } catch (e) {
        showError(err, errorText(e));
        input.select();
      } finally {
        btn.disabled = false;
      }
    };
    form.addEventListener('submit', submit);
    d.addEventListener('cancel', cancel);
    if (!d.open) d.showModal();
    input.focus();
  });
}

// formDialog opens a dialog whose form's submit runs act; the dialog
// stays open with the error shown when act throws.
export function formDialog(d, form, errEl, submitBtn, act) {
  showError(errEl, '');
  return new Promise((resolve) => {
    const submit = async (ev) => {
      ev.preventDefault();
      submitBtn.disabled = true;
      try {
        const v = await act();
        done(v);
        d.close();
      } catch (e) {
        showError(errEl, errorText(e));
      } finally {
        submitBtn.disabled = false;
      }
    };
    const done = (v) => {
      form.removeEventListener('submit', submit);
      d.removeEventListener('close', closed);
      resolve(v);
    };
    const closed = () => done(undefined);
    form.addEventListener('submit', submit);
    d.addEventListener('close', closed);
    d.showModal();
  });
}
