// The loss chart: training loss and validation loss against the step, drawn as SVG by hand. It is redrawn
// whole as points arrive (a few thousand points at most per job: cheap).

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 640;
const HEIGHT = 240;
const PAD = { left: 56, right: 16, top: 12, bottom: 28 };
const DOTS_UP_TO = 300;  // past this many points a line alone reads better than dots

function node(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  if (text !== undefined) el.textContent = text;
  return el;
}

export function lossChart() {
  const svg = node("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "chart", role: "img",
                            "aria-label": "training loss and validation loss by step", "data-points": 0 });
  return svg;
}

// series: {loss: [[step, value], …], val_loss: [[step, value], …]}
export function drawLoss(svg, series) {
  const loss = (series.loss || []).filter(([, v]) => Number.isFinite(v));
  const val = (series.val_loss || []).filter(([, v]) => Number.isFinite(v));
  svg.replaceChildren();
  svg.setAttribute("data-points", loss.length);
  svg.setAttribute("data-val-points", val.length);
  const all = loss.concat(val);
  if (!all.length) {
    svg.append(node("text", { x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle", class: "empty" },
                    "No steps yet"));
    return;
  }
  const steps = all.map(([s]) => s);
  const values = all.map(([, v]) => v);
  const [x0, x1] = [Math.min(...steps), Math.max(...steps)];
  let [y0, y1] = [Math.min(...values), Math.max(...values)];
  if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
  const x = (s) => PAD.left + (x1 === x0 ? 0.5 : (s - x0) / (x1 - x0)) * (WIDTH - PAD.left - PAD.right);
  const y = (v) => HEIGHT - PAD.bottom - ((v - y0) / (y1 - y0)) * (HEIGHT - PAD.top - PAD.bottom);

  svg.append(node("line", { x1: PAD.left, y1: HEIGHT - PAD.bottom, x2: WIDTH - PAD.right, y2: HEIGHT - PAD.bottom,
                            class: "axis" }));
  svg.append(node("line", { x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: HEIGHT - PAD.bottom, class: "axis" }));
  for (const v of [y0, (y0 + y1) / 2, y1]) {
    svg.append(node("text", { x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" }, v.toPrecision(3)));
  }
  for (const s of [x0, x1]) {
    svg.append(node("text", { x: x(s), y: HEIGHT - 8, "text-anchor": "middle", class: "tick" }, `step ${s}`));
  }
  for (const [name, points] of [["loss", loss], ["val_loss", val]]) {
    if (!points.length) continue;
    svg.append(node("polyline", { class: `line ${name}`,
                                  points: points.map(([s, v]) => `${x(s).toFixed(1)},${y(v).toFixed(1)}`).join(" ") }));
    if (points.length <= DOTS_UP_TO) {
      for (const [s, v] of points) {
        const dot = node("circle", { cx: x(s).toFixed(1), cy: y(v).toFixed(1), r: 2.5, class: `dot ${name}` });
        dot.append(node("title", {}, `${name} at step ${s}: ${v.toPrecision(4)}`));
        svg.append(dot);
      }
    }
  }
  svg.append(node("text", { x: WIDTH - PAD.right, y: PAD.top + 10, "text-anchor": "end", class: "legend loss" },
                  "loss"));
  if (val.length) {
    svg.append(node("text", { x: WIDTH - PAD.right, y: PAD.top + 24, "text-anchor": "end",
                              class: "legend val_loss" }, "val_loss"));
  }
}
