// The Run workflow dialog: a registered workflow, its parameters
// (key=value lines, as drover run -p takes them) and optional targets.
import {h, replace, $} from './dom.js';
import {listWorkflows, getWorkflow, createJob, ApiError} from './api.js';
import {formDialog, toast, errorText} from './ui.js';

export async function openRun() {
  const d = $('#run-dialog');
  const sel = $('#run-workflow');
  const sig = $('#run-signature');
  let list;
  try {
    list = (await listWorkflows()).workflows || [];
  } catch (e) {
    toast(errorText(e), 'error');
    return undefined;
  }
  if (list.length === 0) {
    toast('No workflow is registered on this server: add one with drover workflow add NAME FILE', 'error');
    return undefined;
  }
  replace(sel, list.map((w) => h('option', {value: w.name}, w.name)));
  const showSig = async () => {
    sig.textContent = '';
    try {
      const w = await getWorkflow(sel.value);
      sig.textContent = w.signature ? 'main' + w.signature.replace(/^main/, '') : '';
    } catch {
      // The signature is a hint only.
    }
  };
  sel.onchange = showSig;
  showSig();
  const created = await formDialog(d, $('#run-form'), $('#run-error'), $('#run-submit'), async () => {
    const params = $('#run-params').value.split('\n').map((l) => l.trim()).filter(Boolean);
    for (const p of params) {
      if (!p.includes('=')) throw new ApiError(0, 'bad_request', `parameter "${p}": want key=value`);
    }
    const targets = $('#run-targets').value.split(',').map((t) => t.trim()).filter(Boolean);
    const req = {workflow: sel.value};
    if (params.length) req.params = params;
    if (targets.length) req.targets = targets;
    const name = $('#run-name').value.trim();
    if (name) req.name = name;
    return createJob(req);
  });
  if (created) toast(`Job ${created.job.id} created` + (created.children ? ` with ${created.children} child jobs` : ''));
  return created;
}
