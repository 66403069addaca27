// Building the page from data: every text goes in as a text node, never as markup, so a job's own strings
// (labels, errors, replies) cannot inject anything.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "className") el.className = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function statusBadge(status) {
  return h("span", { className: `status status-${status}`, "data-status": status }, status);
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

export function number(value, digits = 4) {
  return typeof value === "number" ? value.toPrecision(digits) : "—";
}

export function labelsText(labels) {
  return Object.entries(labels || {}).map(([k, v]) => `${k}:${v}`).join(" ");
}

export function copyable(text) {
  // A read-only field and a button: the path can be selected by hand too, where the clipboard is not allowed.
  const field = h("input", { className: "copy-field", readonly: true, value: text, size: 28 });
  const button = h("button", { type: "button", className: "copy", onclick: async () => {
    field.select();
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      document.execCommand("copy");
    }
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  } }, "Copy");
  return h("span", { className: "copyable" }, field, button);
}

export const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
