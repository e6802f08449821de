// Builds the same markup as dashboard.py's cell_html/sparkline_svg, with textContent and attributes only (never innerHTML).
"use strict";
const SVG = "http://www.w3.org/2000/svg";
function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}
function spark(values, unit) {
  const td = el("td", "spark-cell");
  if (!values.length) { td.appendChild(el("span", "spark-empty", "no data")); return td; }
  const top = Math.max(...values) || 1, step = 100 / Math.max(values.length - 1, 1);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark"); svg.setAttribute("viewBox", "0 0 100 21");
  svg.setAttribute("preserveAspectRatio", "none"); svg.setAttribute("role", "img");
  const line = document.createElementNS(SVG, "polyline");
  const point = (v, i) => (i * step).toFixed(1) + "," + (20 - v / top * 18).toFixed(1);
  line.setAttribute("points", values.map(point).join(" "));
  svg.appendChild(line); td.appendChild(svg);
  td.appendChild(el("span", "spark-last", values[values.length - 1] + " " + unit));
  return td;
}
function cell(c) { return "spark" in c ? spark(c.spark, c.unit) : el("td", c.cls || "", c.text); }
function fill(table, rows) {
  const body = el("tbody"), columns = table.tHead.rows[0].cells.length;
  for (const row of rows) {
    const tr = el("tr");
    for (const c of row) tr.appendChild(cell(c));
    body.appendChild(tr);
  }
  if (!rows.length) {
    const td = el("td", "none", "none");
    td.colSpan = columns;
    body.appendChild(el("tr")).appendChild(td);
  }
  table.replaceChild(body, table.tBodies[0]);
}
const live = document.getElementById("live");
async function refresh() {
  try {
    const answer = await fetch("state.json", {cache: "no-store"});
    if (!answer.ok) throw new Error("HTTP " + answer.status);
    const view = await answer.json();
    document.getElementById("summary").textContent = view.summary;
    for (const [key, rows] of Object.entries(view.tables)) {
      const table = document.getElementById(key);
      if (table) fill(table, rows);
    }
    live.textContent = "live";
  } catch (err) {
    live.textContent = "disconnected: " + err.message;
  } finally {
    setTimeout(refresh, 1000);
  }
}
live.textContent = "live";
setTimeout(refresh, 1000);
