/* anatomist report: renders feature dashboards from data files loaded by <script> tags (works from file://).
   Every string from data goes into the page through textContent or attributes, never as markup. */
"use strict";
var anatomist = { store: {}, page: document.body.dataset.page };

anatomist.data = function (key, obj) { anatomist.store[key] = obj; };

function el(tag, attrs, text) {
  var e = document.createElement(tag);
  if (attrs) { Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); }); }
  if (text !== undefined && text !== null) { e.textContent = String(text); }
  return e;
}

function svgEl(tag, attrs) {
  var e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
  return e;
}

function fmt(x) {
  if (x === null || x === undefined) { return "–"; }
  if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e4)) { return x.toExponential(2); }
  return String(Math.round(x * 1000) / 1000);
}

function showError(message) {
  var box = document.getElementById("error") || document.querySelector("main").appendChild(el("div", { id: "error" }));
  box.className = "problems";
  box.textContent = message;
}

function visible(text) { return text.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5"); }

/* ---------------------------------------------------------------- index of latents */

function initIndex() {
  var index = anatomist.store.index;
  if (!index) { showError("data/index.js is missing or unreadable: this dashboard has no index data."); return; }
  var L = index.latents, n = index.d_sae, rows = [];
  for (var i = 0; i < n; i++) {
    var toks = L.top_tokens[i] || [];
    rows.push({ i: i, density: L.density[i], mean: L.mean[i], max: L.max[i], toks: toks, top: toks.join("\n") });
  }
  // one page of rows at a time keeps the table fast for dictionaries of 100k latents; every page is reachable
  var state = { key: "density", dir: -1, query: "", page: 0 }, limit = window.ANATOMIST_PAGE_SIZE || 1000;
  var tbody = document.getElementById("latent-rows"), count = document.getElementById("count");
  var pager = el("p", { id: "pages" }), prev = el("button", { type: "button", id: "prev-page" }, "◀ previous"),
      next = el("button", { type: "button", id: "next-page" }, "next ▶"), where = el("span", { id: "page-info" });
  [prev, where, next].forEach(function (x) { pager.appendChild(x); pager.appendChild(document.createTextNode(" ")); });
  document.getElementById("latents").after(pager);
  prev.addEventListener("click", function () { state.page -= 1; render(); });
  next.addEventListener("click", function () { state.page += 1; render(); });
  function render() {
    var q = state.query.toLowerCase();
    var shown = rows.filter(function (r) {
      return !q || r.top.toLowerCase().indexOf(q) >= 0 || String(r.i) === q;
    });
    shown.sort(function (a, b) {
      var x = a[state.key], y = b[state.key];
      if (typeof x === "string") { return state.dir * x.localeCompare(y); }
      return state.dir * ((x === null ? -Infinity : x) - (y === null ? -Infinity : y)) || a.i - b.i;
    });
    var pages = Math.max(1, Math.ceil(shown.length / limit));
    state.page = Math.min(Math.max(state.page, 0), pages - 1);
    var from = state.page * limit, to = Math.min(from + limit, shown.length);
    count.textContent = shown.length + " of " + n + " latents";
    where.textContent = shown.length ? "rows " + (from + 1) + "–" + to + " of " + shown.length : "";
    pager.hidden = pages < 2;
    prev.disabled = state.page === 0;
    next.disabled = state.page >= pages - 1;
    tbody.replaceChildren();
    shown.slice(from, to).forEach(function (r) {
      var tr = el("tr");
      var a = el("a", { href: "latent.html#" + r.i }, r.i);
      var td = el("td"); td.appendChild(a); tr.appendChild(td);
      [r.density, r.mean, r.max].forEach(function (v) { tr.appendChild(el("td", { "class": "num" }, fmt(v))); });
      var cell = el("td", { "class": "toks" });
      r.toks.forEach(function (t) { cell.appendChild(el("span", { "class": "tk" }, visible(t))); });
      tr.appendChild(cell);
      tbody.appendChild(tr);
    });
    document.querySelectorAll("th[data-key]").forEach(function (th) {
      th.dataset.sorted = th.dataset.key === state.key ? (state.dir > 0 ? "asc" : "desc") : "";
    });
  }
  document.querySelectorAll("th[data-key]").forEach(function (th) {
    th.addEventListener("click", function () {
      var key = th.dataset.key;
      state.dir = state.key === key ? -state.dir : (key === "i" || key === "top" ? 1 : -1);
      state.key = key;
      state.page = 0;
      render();
    });
  });
  document.getElementById("search").addEventListener("input", function (e) {
    state.query = e.target.value.trim();
    state.page = 0;
    render();
  });
  render();
}

/* ---------------------------------------------------------------- one latent */

function histogram(h, spec) {
  var lo = spec[0], hi = spec[1], bins = spec[2], step = (hi - lo) / bins;
  if (!h) { return el("p", { "class": "muted" }, "no nonzero activations"); }
  var W = 420, H = 140, pad = 24, svg = svgEl("svg", { width: W, height: H + pad, "class": "hist", role: "img" });
  var c = h.counts, max = Math.max.apply(null, c), bw = (W - 2 * pad) / c.length;
  c.forEach(function (v, k) {
    var bh = max ? (H - 10) * v / max : 0;
    var r = svgEl("rect", { x: pad + k * bw, y: H - bh, width: Math.max(bw - 1, 1), height: bh });
    var t = svgEl("title"); t.textContent = v + " activations in [" + fmt(Math.pow(10, lo + (h.first + k) * step)) +
      ", " + fmt(Math.pow(10, lo + (h.first + k + 1) * step)) + ")";
    r.appendChild(t); svg.appendChild(r);
  });
  [0, c.length].forEach(function (k) {
    var label = svgEl("text", { x: pad + k * bw, y: H + 16, "text-anchor": "middle" });
    label.textContent = fmt(Math.pow(10, lo + (h.first + k) * step));
    svg.appendChild(label);
  });
  return svg;
}

function context(ex, chunk, maxAct, centre) {
  var line = el("div", { "class": "ctx" });
  line.appendChild(el("span", { "class": "act" }, fmt(ex.act)));
  var text = el("span", { "class": "text" });
  ex.ctx.forEach(function (id, k) {
    if (id < 0) { return; }
    // ex.text (when present) gives each token's share of the context's text: a token holding part of a
    // multi-byte character shows nothing, the token completing it shows the whole character
    var a = ex.acts[k] || 0, tok = ex.text ? ex.text[k] : chunk.tokens[String(id)];
    var s = el("span", { "class": "tok" + (k === centre ? " centre" : ""), title: "activation " + fmt(a) },
      visible(tok === undefined ? "?" : tok));
    var alpha = maxAct > 0 ? Math.min(1, a / maxAct) : 0;
    if (alpha > 0) { s.style.backgroundColor = "rgba(255, 120, 0, " + alpha.toFixed(3) + ")"; }
    text.appendChild(s);
  });
  line.appendChild(text);
  return line;
}

function imageCanvas(img, heat, maxAct) {
  // img: [h, w, base64 bytes] grayscale (ink dark on white), or [h, w, base64 HWC bytes, 3] colour;
  // heat (vision dashboards): a latent's activation per patch, drawn over the image in orange
  var h = img[0], w = img[1], bytes = atob(img[2]), rgb = img[3] === 3, scale = Math.max(1, Math.round(96 / w));
  var c = el("canvas", { width: w * scale, height: h * scale, "class": "digit" });
  var ctx = c.getContext("2d"), data = ctx.createImageData(w, h);
  for (var p = 0; p < w * h; p++) {
    if (rgb) {
      for (var ch = 0; ch < 3; ch++) { data.data[4 * p + ch] = bytes.charCodeAt(3 * p + ch); }
    } else {
      data.data[4 * p] = data.data[4 * p + 1] = data.data[4 * p + 2] = 255 - bytes.charCodeAt(p);
    }
    data.data[4 * p + 3] = 255;
  }
  var tmp = el("canvas", { width: w, height: h }); tmp.getContext("2d").putImageData(data, 0, 0);
  ctx.imageSmoothingEnabled = false; ctx.drawImage(tmp, 0, 0, w * scale, h * scale);
  if (heat && maxAct > 0) {
    var rows = heat.grid[0], cols = heat.grid[1], ph = h * scale / rows, pw = w * scale / cols;
    heat.v.forEach(function (v, k) {
      var alpha = Math.min(1, v / maxAct) * 0.7;
      if (alpha > 0) {
        ctx.fillStyle = "rgba(255, 120, 0, " + alpha.toFixed(3) + ")";
        ctx.fillRect((k % cols) * pw, Math.floor(k / cols) * ph, pw, ph);
      }
    });
  }
  return c;
}

function heatCaption(heat) {
  return heat && heat.cls !== null && heat.cls !== undefined ? " \u00b7 CLS " + fmt(heat.cls) : "";
}

function examples(list, chunk, index, maxAct, label) {
  var box = el("div", { "class": "examples" });
  if (!list.length) { box.appendChild(el("p", { "class": "muted" }, "none: this latent never fired")); }
  list.forEach(function (ex) {
    if (index.kind === "images") {
      var fig = el("figure", { "class": "img" + (ex.heat ? " heat" : "") });
      var img = chunk.images[String(ex.row)];
      if (img) { fig.appendChild(imageCanvas(img, ex.heat, maxAct)); }
      fig.appendChild(el("figcaption", null, (label ? label(ex) + " " : "") + fmt(ex.act) + heatCaption(ex.heat)));
      box.appendChild(fig);
    } else {
      var line = context(ex, chunk, maxAct, index.window[0]);
      if (label) { line.insertBefore(el("span", { "class": "q" }, label(ex)), line.firstChild); }
      box.appendChild(line);
    }
  });
  return box;
}

function classBars(classes) {
  var total = classes.reduce(function (s, c) { return s + c[1]; }, 0);
  var ul = el("ul", { "class": "classes" });
  classes.forEach(function (c) {
    var li = el("li");
    li.appendChild(el("span", { "class": "cls" }, c[0]));
    var bar = el("span", { "class": "bar" }); bar.style.width = Math.round(160 * c[1] / total) + "px";
    li.appendChild(bar); li.appendChild(el("span", { "class": "num" }, " " + c[1]));
    ul.appendChild(li);
  });
  return ul;
}

function tokenList(pairs, chunk) {
  var ul = el("ul", { "class": "logits" });
  pairs.forEach(function (p) {
    var li = el("li");
    li.appendChild(el("span", { "class": "tok" }, visible(chunk.tokens[String(p[0])] || "?")));
    li.appendChild(el("span", { "class": "num" }, fmt(p[1])));
    ul.appendChild(li);
  });
  return ul;
}

function explanations(list) {
  var box = el("div", { id: "explanations" });
  list.forEach(function (e) {
    var p = el("p", { "class": "explanation" });
    if (list.length > 1) { p.appendChild(el("span", { "class": "q" }, e.dictionary + ": ")); }
    p.appendChild(el("q", null, e.explanation));
    var scores = Object.keys(e.scores || {}).map(function (k) { return k + " " + fmt(e.scores[k]); });
    if (scores.length) { p.appendChild(el("span", { "class": "muted" }, " \u00b7 " + scores.join(" \u00b7 "))); }
    box.appendChild(p);
  });
  return box;
}

function section(title, child) {
  var s = el("section"); s.appendChild(el("h2", null, title)); s.appendChild(child); return s;
}

function renderLatent(i, chunk, index) {
  var rec = chunk.latents[i - chunk.chunk * index.chunk_size], L = index.latents;
  var root = document.getElementById("latent");
  root.replaceChildren();
  var head = el("div", { "class": "latent-head" });
  head.appendChild(el("h1", null, "Latent " + i));
  var nav = el("nav");
  if (i > 0) { nav.appendChild(el("a", { href: "#" + (i - 1), id: "prev" }, "\u2190 " + (i - 1))); }
  nav.appendChild(el("a", { href: "index.html" }, "all latents"));
  if (i + 1 < index.d_sae) { nav.appendChild(el("a", { href: "#" + (i + 1), id: "next" }, (i + 1) + " \u2192")); }
  head.appendChild(nav);
  head.appendChild(el("p", { id: "summary" }, "density " + fmt(L.density[i]) + " \u00b7 mean activation " +
    fmt(L.mean[i]) + " \u00b7 max " + fmt(L.max[i]) + " \u00b7 over " + index.n_rows + " rows"));
  root.appendChild(head);
  var said = (index.explanations || {})[String(i)];
  if (said) { root.appendChild(section("Explanation (autointerp)", explanations(said))); }
  var maxAct = L.max[i] || 0;
  if (rec.density_by_role) {
    var roles = Object.keys(rec.density_by_role).map(function (r) { return r + " tokens " + fmt(rec.density_by_role[r]); });
    head.appendChild(el("p", { id: "roles" }, "fires on " + roles.join(" \u00b7 ") + " (share of tokens of that role)"));
  }
  root.appendChild(section("Top activations", examples(rec.top, chunk, index, maxAct, null)));
  if (rec.classes) { root.appendChild(section("Classes of the top images", classBars(rec.classes))); }
  root.appendChild(section("Samples across the activation distribution", examples(rec.quantiles, chunk, index, maxAct,
    function (ex) { return "q" + Math.round(ex.q * 100) + " [" + fmt(ex.lo) + ", " + fmt(ex.hi) + ")"; })));
  root.appendChild(section("Activation histogram (nonzero activations, log-spaced bins)", histogram(rec.hist, index.hist_log10)));
  if (rec.logits) {
    var lg = el("div", { "class": "cols" });
    var pos = el("div"); pos.appendChild(el("h3", null, "promoted")); pos.appendChild(tokenList(rec.logits.pos, chunk));
    var neg = el("div"); neg.appendChild(el("h3", null, "suppressed")); neg.appendChild(tokenList(rec.logits.neg, chunk));
    lg.appendChild(pos); lg.appendChild(neg);
    root.appendChild(section("Logit effects (decoder direction through the unembedding)", lg));
  }
  var near = el("ul", { "class": "near" });
  rec.near.forEach(function (p) {
    var li = el("li"); li.appendChild(el("a", { href: "#" + p[0] }, "latent " + p[0]));
    li.appendChild(el("span", { "class": "num" }, " cos " + fmt(p[1]))); near.appendChild(li);
  });
  root.appendChild(section("Nearest latents by decoder cosine", near));
  document.title = "Latent " + i;
}

function initLatent() {
  var index = anatomist.store.index;
  if (!index) { showError("data/index.js is missing or unreadable: this dashboard has no index data."); return; }
  function show() {
    var i = parseInt(location.hash.slice(1) || "0", 10);
    if (!(i >= 0 && i < index.d_sae)) { showError("no latent " + location.hash.slice(1) + " (this dictionary has " + index.d_sae + ")"); return; }
    var c = Math.floor(i / index.chunk_size), key = "chunk_" + String(c).padStart(3, "0");
    if (anatomist.store[key]) { renderLatent(i, anatomist.store[key], index); return; }
    var s = el("script", { src: "data/" + key + ".js" });
    s.onload = function () {
      if (anatomist.store[key]) { renderLatent(i, anatomist.store[key], index); }
      else { showError("data/" + key + ".js holds no data for latents " + c * index.chunk_size + "\u2013" + ((c + 1) * index.chunk_size - 1)); }
    };
    s.onerror = function () {
      showError("data/" + key + ".js is missing: latents " + c * index.chunk_size + "\u2013" +
        ((c + 1) * index.chunk_size - 1) + " cannot be shown (" + (index.missing_chunks && index.missing_chunks[c] || "file not found") + ")");
    };
    document.body.appendChild(s);
  }
  window.addEventListener("hashchange", show);
  show();
}

/* ---------------------------------------------------------------- per-image view (vision dashboards) */

function initImages() {
  var index = anatomist.store.index, view = anatomist.store.images;
  if (!index || !view) { showError("data/index.js or data/images.js is missing: no per-image view to show."); return; }
  var root = document.getElementById("image-views");
  view.images.forEach(function (im) {
    var box = el("section", { "class": "image-view", id: "image-" + im.row });
    var label = im.label === null ? "" : " \u00b7 class " + (view.classes ? view.classes[im.label] : im.label);
    box.appendChild(el("h2", null, "image " + im.row + label + " \u00b7 " + fmt(im.l0_per_token) + " latents per token"));
    var row = el("div", { "class": "examples" });
    var plain = el("figure", { "class": "img" }); plain.appendChild(imageCanvas(im.image, null, 0));
    plain.appendChild(el("figcaption", null, "image")); row.appendChild(plain);
    im.latents.forEach(function (lat) {
      var fig = el("figure", { "class": "img heat" });
      fig.appendChild(imageCanvas(im.image, lat.heat, lat.max));
      var cap = el("figcaption"); cap.appendChild(el("a", { href: "latent.html#" + lat.i }, "latent " + lat.i));
      cap.appendChild(document.createTextNode(" max " + fmt(lat.max) + heatCaption(lat.heat)));
      fig.appendChild(cap); row.appendChild(fig);
    });
    box.appendChild(row);
    root.appendChild(box);
  });
}

window.addEventListener("DOMContentLoaded", function () {
  if (anatomist.page === "images") { initImages(); }
  if (anatomist.page === "features-index") { initIndex(); }
  if (anatomist.page === "latent") { initLatent(); }
});
