// Builds the same markup as dashboard.py (cell_html, pager_html, detail_html) with textContent and
// attributes only (never innerHTML). The view is the server's: state.json with the page's own query string
// (search, state filter, pages, the selected object), so only the visible page travels and is drawn.
"use strict";
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
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
function link(href, text) {
  const a = el("a", "", text);
  a.setAttribute("href", href);
  return a;
}
function cell(c) {
  if ("spark" in c) return spark(c.spark, c.unit);
  const td = el("td", c.cls || "");
  if (c.title) td.title = c.title;
  if (c.href) td.appendChild(link(c.href, c.text)); else td.textContent = c.text;
  return td;
}
function query(changes) {
  const params = new URLSearchParams(location.search);
  for (const [key, value] of Object.entries(changes)) {
    if (value === null || value === "") params.delete(key); else params.set(key, value);
  }
  params.sort();
  return "?" + params.toString();
}
function fill(key, table) {
  const node = $(key), body = el("tbody"), columns = node.tHead.rows[0].cells.length;
  for (const row of table.rows) {
    const tr = el("tr");
    for (const c of row) tr.appendChild(cell(c));
    body.appendChild(tr);
  }
  if (!table.rows.length) {
    const td = el("td", "none", "none");
    td.colSpan = columns;
    body.appendChild(el("tr")).appendChild(td);
  }
  node.replaceChild(body, node.tBodies[0]);
  $(key + "-count").textContent = table.countText;
  const pager = el("nav", "pager");
  pager.id = key + "-pager";
  pager.appendChild(el("span", "page-of", table.pageText));
  for (const [label, page] of [["\u2039 previous", table.page - 1], ["next \u203a", table.page + 1]]) {
    if (page >= 1 && page <= table.pages) pager.appendChild(link(query({["page_" + key]: page}), label));
  }
  $(key + "-pager").replaceWith(pager);
}
function showDetail(detail) {
  const section = el("section");
  section.id = "detail";
  if (!detail) { section.hidden = true; $("detail").replaceWith(section); return; }
  const title = section.appendChild(el("h2", "", detail.title + " "));
  title.appendChild(link(query({kind: null, name: null}), "close")).className = "close";
  const table = section.appendChild(el("table", "fields")), body = table.appendChild(el("tbody"));
  for (const [label, value, cls] of detail.fields) {
    const tr = body.appendChild(el("tr"));
    tr.appendChild(el("th", "", label));
    tr.appendChild(el("td", cls, value));
  }
  $("detail").replaceWith(section);
}
const live = $("live");
let timer = null, asked = 0;
async function refresh() {
  clearTimeout(timer);
  const mine = ++asked;
  try {
    const answer = await fetch("state.json" + location.search, {cache: "no-store"});
    if (!answer.ok) throw new Error("HTTP " + answer.status);
    const view = await answer.json();
    if (mine !== asked) return;             // a newer question (typing, a click) is on its way
    $("summary").textContent = view.summary;
    $("notice").textContent = view.notice;
    for (const [key, table] of Object.entries(view.tables)) if ($(key)) fill(key, table);
    showDetail(view.detail);
    live.textContent = "live";
    document.body.dataset.shown = location.search;   // tests wait on this
  } catch (err) {
    live.textContent = "disconnected: " + err.message;
  } finally {
    if (mine === asked) timer = setTimeout(refresh, 1000);
  }
}
function go(search) {
  history.pushState(null, "", search || "?");
  refresh();
}
// Links inside the page (pages, details, close) change the query in place; the form searches as you type.
document.addEventListener("click", (event) => {
  const a = event.target.closest && event.target.closest("a");
  if (!a || !(a.getAttribute("href") || "").startsWith("?") || event.ctrlKey || event.metaKey) return;
  event.preventDefault();
  go(a.getAttribute("href"));
});
const form = $("search");
let typing = null;
function search() {
  const pages = Object.fromEntries([...new URLSearchParams(location.search).keys()]
    .filter((k) => k.startsWith("page_")).map((k) => [k, null]));
  go(query({...pages, q: form.elements.q.value, state: form.elements.state.value}));
}
form.addEventListener("submit", (event) => { event.preventDefault(); search(); });
form.elements.q.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(search, 150); });
form.elements.state.addEventListener("change", search);
window.addEventListener("popstate", refresh);
live.textContent = "live";
timer = setTimeout(refresh, 1000);
