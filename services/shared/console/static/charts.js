// Small SVG line charts for the console (no library, no build step).
// lineChart({title, series: [{name, color, points: [[timeMs, value|null], ...]}], format, yMax, step})
"use strict";

const Charts = (() => {
  const W = 460, H = 170, L = 46, R = 10, T = 24, B = 22;
  const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));

  function lineChart({title, series, format = (v) => v.toFixed(2), yMax = null, step = false, slug = ""}) {
    const all = series.flatMap((s) => s.points.filter((p) => p[1] !== null && p[1] !== undefined));
    const head = `<svg class="chart" data-chart="${esc(slug)}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}">
      <text x="${L}" y="15" style="font-weight:600;fill:#1f2328">${esc(title)}</text>`;
    if (!all.length) return head + `<text x="${L}" y="${H / 2}">no data yet</text></svg>`;
    const t0 = Math.min(...all.map((p) => p[0])), t1 = Math.max(...all.map((p) => p[0]), t0 + 1000);
    const top = yMax ?? (Math.max(...all.map((p) => p[1])) * 1.1 || 1);
    const x = (t) => L + (W - L - R) * (t - t0) / (t1 - t0);
    const y = (v) => H - B - (H - T - B) * Math.min(v, top) / top;
    let body = `<line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#d0d7de"/>
      <line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#d0d7de"/>
      <text x="${L - 4}" y="${T + 4}" text-anchor="end">${esc(format(top))}</text>
      <text x="${L - 4}" y="${H - B}" text-anchor="end">${esc(format(0))}</text>
      <text x="${L}" y="${H - 6}">${esc(new Date(t0).toLocaleTimeString())}</text>
      <text x="${W - R}" y="${H - 6}" text-anchor="end">${esc(new Date(t1).toLocaleTimeString())}</text>`;
    series.forEach((s, i) => {
      const pts = [];
      let last = null;
      for (const [t, v] of s.points) {
        if (v === null || v === undefined) continue;
        if (step && last !== null) pts.push(`${x(t).toFixed(1)},${y(last).toFixed(1)}`);
        pts.push(`${x(t).toFixed(1)},${y(v).toFixed(1)}`);
        last = v;
      }
      if (step && last !== null) pts.push(`${(W - R).toFixed(1)},${y(last).toFixed(1)}`);
      body += `<polyline class="series" data-series="${esc(s.name)}" fill="none" stroke="${s.color}" stroke-width="2" points="${pts.join(" ")}"/>`;
      body += `<text x="${W - R - 150 + i * 75}" y="15" style="fill:${s.color}">● ${esc(s.name)}</text>`;
    });
    return head + body + "</svg>";
  }

  return {lineChart, esc};
})();
