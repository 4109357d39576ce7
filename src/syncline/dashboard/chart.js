// A small live line chart in SVG: a rolling window of (time, value) samples kept in
// the page, redrawn on every poll. No library: the dashboard loads nothing from
// elsewhere.

import { h, fmtRate } from "./dom.js";

const W = 300;
const H = 80;
const MIN_SPAN_MS = 10_000; // a young series fills the chart instead of a sliver at its right

export class Series {
  constructor(windowMs) {
    this.windowMs = windowMs;
    this.points = []; // [timeMs, value | null]; null leaves a gap (value unknown)
  }

  push(t, value) {
    this.points.push([t, value]);
    const cutoff = t - this.windowMs;
    while (this.points.length > 1 && this.points[0][0] < cutoff) this.points.shift();
  }

  latest() {
    return this.points.length ? this.points[this.points.length - 1][1] : null;
  }
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

export function createChart(title, kind) {
  const area = h("path", { class: "area" });
  const line = h("path", { class: "line", "vector-effect": "non-scaling-stroke" });
  const grid = h(
    "g",
    { class: "grid" },
    [0.5, 1].map((f) =>
      h("line", { x1: 0, x2: W, y1: H * (1 - f), y2: H * (1 - f), "vector-effect": "non-scaling-stroke" }),
    ),
  );
  const svg = h(
    "svg",
    { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": title },
    grid,
    area,
    line,
  );
  const now = h("span", { class: "chart-now", text: "–" });
  const max = h("span", { class: "chart-max muted" });
  const el = h(
    "figure",
    { class: `chart chart-${kind}`, "data-chart": kind },
    h("figcaption", {}, h("span", { text: title }), now),
    svg,
    max,
  );
  return { el, line, area, now, max };
}

export function drawChart(chart, series, nowMs) {
  const values = series.points.map(([, v]) => v).filter((v) => v !== null);
  const top = niceMax(Math.max(0, ...values));
  const first = series.points.length ? series.points[0][0] : nowMs;
  const span = Math.min(series.windowMs, Math.max(MIN_SPAN_MS, nowMs - first));
  const x = (t) => (W * (t - (nowMs - span))) / span;
  const y = (v) => H - (H * v) / top;
  const segments = [];
  let current = [];
  for (const [t, v] of series.points) {
    if (v === null) {
      if (current.length) segments.push(current);
      current = [];
    } else {
      current.push([x(t).toFixed(1), y(v).toFixed(1)]);
    }
  }
  if (current.length) segments.push(current);
  chart.line.setAttribute(
    "d",
    segments.map((s) => s.map(([px, py], i) => `${i ? "L" : "M"}${px} ${py}`).join(" ")).join(" "),
  );
  chart.area.setAttribute(
    "d",
    segments
      .filter((s) => s.length > 1)
      .map((s) => `M${s[0][0]} ${H} ${s.map(([px, py]) => `L${px} ${py}`).join(" ")} L${s[s.length - 1][0]} ${H} Z`)
      .join(" "),
  );
  chart.now.textContent = fmtRate(series.latest());
  chart.max.textContent = `scale ${fmtRate(top)} · last ${fmtSpan(span)}`;
}

function fmtSpan(ms) {
  const s = Math.round(ms / 1000);
  return s < 120 ? `${s} s` : `${Math.round(s / 60)} min`;
}
