// ui/app.js — the operator console: four views over the admin API, no
// library, no build step (the browser runs this file as written).
//
//   #/requests           the history, filtered and paged, kept live by the
//                        SSE feed /_sluice/requests/stream
//   #/request/<id>       one request: timeline, outcome in words, usage and
//                        cost, translation pair, stored bodies, copy-as-curl
//   #/usage              /_sluice/usage as charts and a breakdown table
//   #/health             workers, streams, upstream pools, reload, the running config
//
// Every value from the history is written with textContent, never as HTML:
// records carry client-chosen text (ids, paths, bodies). The admin token is
// asked for once and kept in sessionStorage (gone with the tab); nothing the
// page builds — copy-as-curl included — contains a secret.
"use strict";

var TOKEN_KEY = "sluice.admin_token";
var PAGE = 50;
var main = document.getElementById("main");
var announce = document.getElementById("announce");

// ---- small helpers --------------------------------------------------------

function el(tag, attrs) {
  var e = document.createElement(tag);
  if (attrs) for (var k in attrs) {
    var v = attrs[k];
    if (v == null || v === false) continue;
    if (k === "text") e.textContent = v;
    else if (k === "class") e.className = v;
    else if (k.slice(0, 2) === "on") e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (var i = 2; i < arguments.length; i++) {
    var c = arguments[i];
    if (c == null || c === false) continue;
    if (Array.isArray(c)) c.forEach(function (x) { if (x) e.appendChild(x); });
    else e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return e;
}

function fmtTime(unix) {
  if (unix == null) return "";
  var d = new Date(unix * 1000);
  var p = function (n, w) { return String(n).padStart(w || 2, "0"); };
  return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " +
    p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds()) + "." + p(d.getMilliseconds(), 3);
}
function fmtNum(n) { return n == null ? "–" : Math.round(n).toLocaleString("en-US"); }
function fmtMs(n) { return n == null ? "–" : (n < 10 ? n.toFixed(1) : Math.round(n).toLocaleString("en-US")); }
// Dollars to the hundredth of a cent, or to six places below a cent (one
// short request costs fractions of a cent), without trailing zeros.
function fmtCost(c) {
  if (c == null) return "–";
  var s = c.toFixed(c >= 0.01 ? 4 : 6).replace(/0+$/, "");
  return "$" + (/\.\d$/.test(s) ? s + "0" : /\.$/.test(s) ? s + "00" : s);
}
function fmtRatio(r) { return r == null ? "–" : (r * 100).toFixed(1) + "%"; }
function isError(r) { return r.status >= 400 || r.status === 0; }

function say(text) { announce.textContent = ""; setTimeout(function () { announce.textContent = text; }, 30); }

// ---- the admin API --------------------------------------------------------

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function Refused() { this.message = "refused"; }

function api(path, opts) {
  opts = opts || {};
  var headers = {};
  if (token()) headers.Authorization = "Bearer " + token();
  return fetch("/_sluice/" + path, { method: opts.method || "GET", headers: headers, signal: opts.signal })
    .then(function (res) {
      if (res.status === 401) { askToken("The admin token was refused. Enter it again."); throw new Refused(); }
      var ct = res.headers.get("content-type") || "";
      var body = ct.indexOf("json") >= 0 ? res.json() : res.text();
      return body.then(function (b) {
        if (!res.ok && !opts.anyStatus) {
          var m = b && b.error && b.error.message ? b.error.message : "HTTP " + res.status;
          throw new Error(m);
        }
        return opts.anyStatus ? { status: res.status, body: b } : b;
      });
    });
}

var configCache = null;
function runningConfig(fresh) {
  if (!configCache || fresh) configCache = api("config");
  return configCache;
}

// ---- the token ------------------------------------------------------------

function askToken(message) {
  stopFeed();
  sessionStorage.removeItem(TOKEN_KEY);
  document.getElementById("signout").hidden = true;
  var input = el("input", { id: "token", type: "password", autocomplete: "off", required: true,
                            "aria-describedby": message ? "token-msg" : null });
  var form = el("form", { class: "login", onsubmit: function (ev) {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value);
      fetch("/_sluice/health", { headers: { Authorization: "Bearer " + input.value } }).then(function (r) {
        if (r.status === 401) askToken("That token was refused (401). Check admin.token in the config.");
        else { document.getElementById("signout").hidden = false; route(); }
      }, function () { askToken("sluice did not answer."); });
    } },
    el("h1", { text: "Admin token" }),
    message && el("p", { id: "token-msg", class: "msg err", role: "alert", text: message }),
    el("p", { text: "This console reads sluice's admin API. Enter the admin.token from the config; it is kept for this tab only." }),
    el("div", { class: "row" }, el("label", { for: "token" }, "Admin token", input),
       el("button", { type: "submit", class: "primary" }, "Open console")));
  main.replaceChildren(form);
  input.focus();
}

// ---- routing --------------------------------------------------------------

var views = {};
var current = null;

function route() {
  var hash = location.hash.replace(/^#\/?/, "") || "requests";
  var parts = hash.split("/");
  var name = parts[0], arg = parts.slice(1).join("/");
  if (!views[name]) name = "requests";
  if (name !== "requests") stopFeed();
  document.querySelectorAll("nav a").forEach(function (a) {
    if (a.dataset.view === (name === "request" ? "requests" : name)) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
  var changed = current !== hash;
  current = hash;
  Promise.resolve(views[name](decodeURIComponent(arg || ""))).then(function () {
    if (changed) { var h1 = main.querySelector("h1"); if (h1) { h1.tabIndex = -1; h1.focus(); } }
  }, function (e) {
    if (!(e instanceof Refused)) main.replaceChildren(el("h1", { text: "Error" }),
      el("p", { class: "msg err", role: "alert", text: String(e.message || e) }));
  });
}

// ---- Requests -------------------------------------------------------------

var filters = { client: "", service: "", supplier: "", model: "", status: "", partial: false,
                search: "", since: "", until: "", session: "" };
var offset = 0;
var shownIds = null;

function localToUnix(v) { return v ? String(new Date(v).getTime() / 1000) : ""; }

function listingQuery() {
  var q = new URLSearchParams({ limit: PAGE, offset: offset });
  ["client", "service", "supplier", "model", "status", "search", "session"].forEach(function (k) {
    if (filters[k]) q.set(k, filters[k]);
  });
  if (filters.partial) q.set("partial", "true");
  if (filters.since) q.set("since", localToUnix(filters.since));
  if (filters.until) q.set("until", localToUnix(filters.until));
  return "requests?" + q.toString();
}

function filterForm(onChange) {
  function text(key, label, extra) {
    return el("label", { for: "f-" + key }, label,
      el("input", Object.assign({ id: "f-" + key, name: key, type: "search", value: filters[key] }, extra || {})));
  }
  var status = el("select", { id: "f-status", name: "status" },
    [["", "any"], ["2", "2xx"], ["4", "4xx"], ["5", "5xx"]].map(function (o) {
      return el("option", { value: o[0], selected: filters.status === o[0] }, o[1]);
    }));
  var service = el("select", { id: "f-service", name: "service" },
    [["", "any"], ["claude", "claude"], ["chat", "chat"], ["codex", "codex"], ["gemini", "gemini"]].map(function (o) {
      return el("option", { value: o[0], selected: filters.service === o[0] }, o[1]);
    }));
  var form = el("form", { class: "filters", role: "search", "aria-label": "Filter requests",
      onsubmit: function (ev) { ev.preventDefault(); read(); } },
    text("search", "Search (id, path, model, error)"),
    text("client", "Client"),
    el("label", { for: "f-service" }, "Service", service),
    text("supplier", "Supplier"),
    text("model", "Model"),
    text("session", "Session (hashed key)"),
    el("label", { for: "f-status" }, "Status", status),
    el("label", { for: "f-since" }, "From", el("input", { id: "f-since", name: "since", type: "datetime-local", value: filters.since })),
    el("label", { for: "f-until" }, "Until", el("input", { id: "f-until", name: "until", type: "datetime-local", value: filters.until })),
    el("label", { class: "check", for: "f-partial" },
       el("input", { id: "f-partial", name: "partial", type: "checkbox", checked: filters.partial }), "Cut answers only"),
    el("div", { class: "row" }, el("button", { type: "submit", class: "primary" }, "Apply"),
       el("button", { type: "button", onclick: function () {
         Object.keys(filters).forEach(function (k) { filters[k] = k === "partial" ? false : ""; });
         offset = 0; route();
       } }, "Clear")));
  function read() {
    Object.keys(filters).forEach(function (k) {
      var f = form.elements[k];
      filters[k] = k === "partial" ? f.checked : f.value.trim();
    });
    offset = 0;
    onChange();
  }
  form.addEventListener("change", function (ev) { if (ev.target.tagName === "SELECT" || ev.target.type === "checkbox") read(); });
  return form;
}

function requestRow(r, fresh) {
  var cls = [isError(r) ? "error" : "", r.partial ? "partial" : "", fresh ? "new" : ""].join(" ").trim();
  var outcome = r.partial ? el("span", { class: "tag part", title: "the client got a cut answer" }, "cut · " + r.reason)
    : isError(r) ? el("span", { class: "tag err" }, r.reason) : el("span", { class: "tag ok" }, r.reason);
  var u = r.usage || {};
  return el("tr", { class: cls || null, "data-id": r.id },
    el("td", { text: fmtTime(r.time) }),
    el("td", null, el("a", { href: "#/request/" + encodeURIComponent(r.id), text: r.id })),
    el("td", { text: r.client || "" }),
    el("td", { class: "hide-narrow", text: r.service || "" }),
    el("td", { text: r.supplier || "" }),
    el("td", { text: r.model_out || r.model_in || "" }),
    el("td", { class: "num status", text: String(r.status) }),
    el("td", { class: "reason" }, outcome),
    el("td", { class: "num hide-narrow", text: fmtMs(r.ttfb_ms) }),
    el("td", { class: "num", text: fmtMs(r.duration_ms) }),
    el("td", { class: "num hide-narrow", text: fmtNum(u.input_tokens) + " / " + fmtNum(u.output_tokens) }),
    el("td", { class: "num", text: fmtCost(r.cost) }));
}

var tableArea = null, liveLine = null;

views.requests = function () {
  tableArea = el("div", { id: "requests-area" });
  liveLine = el("p", { class: "status-line" }, el("span", { id: "live", class: "live off", text: "connecting to the live feed" }));
  main.replaceChildren(el("h1", { text: "Requests" }), filterForm(loadRequests), liveLine, tableArea);
  startFeed();
  return loadRequests();
};

function loadRequests() {
  return api(listingQuery()).then(function (list) {
    if (!tableArea || !document.body.contains(tableArea)) return;
    var before = shownIds;
    shownIds = {};
    list.items.forEach(function (r) { shownIds[r.id] = true; });
    var head = ["Time", "Request id", "Client", "Service", "Supplier", "Model", "Status", "Outcome",
                "TTFB ms", "Duration ms", "Tokens in / out", "Cost"];
    var narrow = { 3: 1, 8: 1, 10: 1 };
    var table = el("table", { id: "requests" },
      el("caption", { class: "sr-only", text: "Requests, newest first. Rows in red failed; rows in amber were cut short." }),
      el("thead", null, el("tr", null, head.map(function (t, i) {
        return el("th", { scope: "col", class: ([6, 8, 9, 10, 11].indexOf(i) >= 0 ? "num " : "") + (narrow[i] ? "hide-narrow" : "") || null, text: t });
      }))),
      el("tbody", null, list.items.map(function (r) { return requestRow(r, before && !before[r.id]); })));
    var from = list.total ? offset + 1 : 0, to = offset + list.items.length;
    var pager = el("div", { class: "pager" },
      el("button", { type: "button", disabled: offset === 0, onclick: function () { offset = Math.max(0, offset - PAGE); loadRequests(); } }, "Newer"),
      el("span", { id: "page-info", text: from + "–" + to + " of " + list.total }),
      el("button", { type: "button", disabled: to >= list.total, onclick: function () { offset += PAGE; loadRequests(); } }, "Older"));
    tableArea.replaceChildren(list.items.length ? el("div", { class: "table-wrap" }, table)
      : el("p", { class: "msg", id: "no-requests", text: "No request matches." }), pager);
  });
}

// The live feed: fetch() rather than EventSource, which cannot send the
// Authorization header. A new record reloads the first page (the server
// applies the filters); a broken feed reconnects from its last event id.
var feed = null;

function stopFeed() {
  if (feed) { feed.stopped = true; feed.ctl.abort(); feed = null; }
}

function startFeed() {
  if (feed) return;
  var f = { ctl: new AbortController(), lastId: null, stopped: false, timer: null };
  feed = f;
  function mark(on, text) {
    var l = document.getElementById("live");
    if (l) { l.className = on ? "live" : "live off"; l.textContent = text; }
  }
  function onRecord(data) {
    var r; try { r = JSON.parse(data); } catch (e) { return; }
    say("New request " + r.id + ", status " + r.status);
    if (offset !== 0) return;
    clearTimeout(f.timer);
    f.timer = setTimeout(loadRequests, 100);
  }
  function connect() {
    if (f.stopped) return;
    var headers = { Accept: "text/event-stream" };
    if (token()) headers.Authorization = "Bearer " + token();
    if (f.lastId) headers["Last-Event-ID"] = f.lastId;
    fetch("/_sluice/requests/stream", { headers: headers, signal: f.ctl.signal }).then(function (res) {
      if (res.status === 401) { askToken("The admin token was refused. Enter it again."); return; }
      if (!res.ok) throw new Error("HTTP " + res.status);
      mark(true, "live: new requests appear as they finish");
      var reader = res.body.getReader(), dec = new TextDecoder(), buf = "";
      function pump() {
        return reader.read().then(function (x) {
          if (x.done) throw new Error("feed ended");
          buf += dec.decode(x.value, { stream: true });
          var i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            var block = buf.slice(0, i); buf = buf.slice(i + 2);
            var ev = {};
            block.split("\n").forEach(function (line) {
              if (!line || line[0] === ":") return;
              var c = line.indexOf(": ");
              ev[line.slice(0, c)] = line.slice(c + 2);
            });
            if (ev.id) f.lastId = ev.id;
            if (ev.event === "record") onRecord(ev.data);
          }
          return pump();
        });
      }
      return pump();
    }).catch(function () {
      if (f.stopped) return;
      mark(false, "live feed lost; reconnecting");
      setTimeout(connect, 2000);
    });
  }
  connect();
}

// ---- one request ----------------------------------------------------------

var REASONS = {
  COMPLETE: "The answer finished normally and the client received all of it.",
  UPSTREAM_EOF_EARLY: "The supplier closed the connection before the answer was complete; the client got a cut answer.",
  UPSTREAM_RESET: "The connection to the supplier failed mid-transfer.",
  UPSTREAM_CONNECT: "sluice could not reach the supplier (name did not resolve or connection refused).",
  UPSTREAM_TLS: "The TLS handshake with the supplier failed.",
  UPSTREAM_HTTP_ERROR: "The supplier answered with an HTTP error; the client got it in its own protocol.",
  UPSTREAM_PROTOCOL: "The supplier sent something its protocol does not allow.",
  UPSTREAM_UNUSABLE: "The supplier's answer had nothing usable in it.",
  UPSTREAM_TIMEOUT_CONNECT: "Connecting to the supplier took longer than the connect timeout.",
  UPSTREAM_TIMEOUT_FIRST_BYTE: "The supplier sent nothing within the first-byte timeout.",
  UPSTREAM_TIMEOUT_IDLE: "The supplier went silent mid-answer longer than the idle timeout; sluice cut the stream.",
  UPSTREAM_TIMEOUT_TOTAL: "The exchange took longer than the total timeout; sluice cut it.",
  CLIENT_ABORT: "The client closed its connection before the answer was finished (expected, not a fault).",
  CLIENT_WRITE_ERROR: "Writing to the client failed: it went away (expected, not a fault).",
  LIMIT_EVENT_SIZE: "One event from the supplier was larger than the event size limit.",
  LIMIT_RESPONSE_SIZE: "The answer grew past the response size limit.",
  SCRIPT_ERROR: "A Lua hook failed while handling this request (see the log).",
  LOCAL_ERROR: "sluice answered the request itself with an error; nothing was sent upstream.",
  SHUTDOWN: "sluice was shutting down and the request outlived the shutdown timeout.",
  INTERNAL: "A failure inside sluice itself.",
};
var SERVICE_PROTOCOL = { claude: "anthropic", chat: "openai-chat", codex: "openai-responses", gemini: "gemini" };

function reasonWords(reason) { return REASONS[reason] || reason; }

function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.filter(function (p) { return p; }).map(function (p) {
    return [el("dt", { text: p[0] }), el("dd", null, p[1])];
  }).reduce(function (a, b) { return a.concat(b); }, []));
}

// A curl command that repeats the request through sluice. The key is a
// shell variable the operator fills in; the body is the stored one, whose
// secrets the history already replaced.
function curlOf(r) {
  var q = function (s) { return "'" + String(s).replace(/'/g, "'\\''") + "'"; };
  var lines = ["curl -sS -X " + (r.method || "POST") + " " + q(location.origin + (r.path || "/"))];
  var auth = { claude: "x-api-key: $SLUICE_KEY", gemini: "x-goog-api-key: $SLUICE_KEY" }[r.service] ||
             "Authorization: Bearer $SLUICE_KEY";
  lines.push("-H \"" + auth + "\"");
  if (r.service === "claude") lines.push("-H 'anthropic-version: 2023-06-01'");
  lines.push("-H 'content-type: application/json'");
  lines.push("-H " + q("x-request-id: " + r.id + "-replay"));
  if (r.request_body) lines.push("--data-binary " + q(r.request_body));
  return lines.join(" \\\n  ");
}

views.request = function (id) {
  return Promise.all([api("requests/" + encodeURIComponent(id)), runningConfig().catch(function () { return {}; })])
    .then(function (res) {
      var r = res[0], cfg = res[1] || {};
      var u = r.usage || {};
      var start = r.time;
      var items = [el("li", { class: "good" }, el("span", { class: "at", text: fmtTime(start) }), "Received " + (r.method || "") + " " + (r.path || ""))];
      var log = r.attempt_log || [];
      log.forEach(function (a, i) {
        var ok = !a.error && a.status > 0 && a.status < 400;
        var next = i + 1 < log.length ? " — retried" : "";
        items.push(el("li", { class: ok ? "good" : "bad", "data-attempt": i + 1 },
          el("span", { class: "at", text: "attempt " + (i + 1) }),
          (a.supplier || "(no supplier)") + ": " + (a.status ? "status " + a.status : "no status") +
          " after " + fmtMs(a.duration_ms) + " ms" +
          (a.error ? " — " + a.error + ": " + reasonWords(a.error) : "") + next));
      });
      if (r.ttfb_ms != null) items.push(el("li", null, el("span", { class: "at", text: "+" + fmtMs(r.ttfb_ms) + " ms" }), "First byte to the client"));
      items.push(el("li", { class: r.reason === "COMPLETE" ? "good" : "bad" },
        el("span", { class: "at", text: "+" + fmtMs(r.duration_ms) + " ms" }),
        "End: " + r.reason + (r.partial ? " (the client got a cut answer)" : "")));
      var from = SERVICE_PROTOCOL[r.service] || r.service || "?";
      var sup = cfg.suppliers && r.supplier && cfg.suppliers[r.supplier];
      var to = sup ? sup.protocol : "?";
      var curl = curlOf(r);
      var copied = el("span", { role: "status", class: "status-line" });
      var body = function (label, text) {
        return [el("h3", { text: label }), text != null ? el("pre", { tabindex: 0, text: text })
          : el("p", { class: "status-line", text: "Not stored (history.bodies is off)." })];
      };
      main.replaceChildren(
        el("p", null, el("a", { href: "#/requests", text: "← Requests" })),
        el("h1", { text: "Request " + r.id }),
        el("p", { id: "outcome", class: "msg " + (r.reason === "COMPLETE" && !isError(r) ? "ok" : "err") },
          el("strong", { text: r.reason + (r.partial ? " · cut answer" : "") + ": " }), reasonWords(r.reason),
          r.error ? el("span", null, el("br"), "Detail: " + r.error) : null),
        facts([["Time", fmtTime(r.time)], ["Client", r.client || "–"], r.key && ["Gateway key", r.key],
               ["Service", r.service || "–"],
               ["Route", r.route || "–"], ["Supplier", r.supplier || "–"],
               ["Model", (r.model_in || "–") + " → " + (r.model_out || "–")],
               ["Status", String(r.status)], ["Attempts", String(r.attempts)],
               ["Translation", from === to ? from + " (no translation)" : from + " → " + to],
               ["Bytes in / out", fmtNum(r.bytes_in) + " / " + fmtNum(r.bytes_out)]]),
        el("h2", { text: "Timeline" }), el("ol", { class: "timeline", id: "timeline" }, items),
        el("h2", { text: "Usage and cost" }),
        facts([["Input tokens", fmtNum(u.input_tokens)], ["Output tokens", fmtNum(u.output_tokens)],
               ["Cache read", fmtNum(u.cache_read_tokens)], ["Cache write", fmtNum(u.cache_write_tokens)],
               ["Cost", fmtCost(r.cost)]]),
        el("h2", { text: "Headers and bodies" }),
        el("p", { class: "status-line", text: "The history stores no headers; bodies only with history.bodies = true, secrets already replaced by [redacted]." }),
        body("Request body", r.request_body), body("Response body", r.response_body),
        el("h2", { text: "Replay" }),
        el("div", { class: "row" }, el("button", { type: "button", id: "copy-curl", onclick: function () {
          var done = function () { copied.textContent = "Copied. Set SLUICE_KEY to your gateway key."; };
          if (navigator.clipboard) navigator.clipboard.writeText(curl).then(done, function () { copied.textContent = "Select the command below to copy it."; });
          else copied.textContent = "Select the command below to copy it.";
        } }, "Copy as curl"), copied),
        el("pre", { id: "curl", tabindex: 0, text: curl }));
    });
};

// ---- Usage ----------------------------------------------------------------

var usageState = { range: "86400", by: "model" };

function barChart(title, rows, key, cls, fmt) {
  var w = 320, hgt = 120, n = Math.max(rows.length, 1), max = 0;
  rows.forEach(function (r) { max = Math.max(max, r[key] || 0); });
  var bw = w / n;
  var svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 " + w + " " + (hgt + 14));
  svg.setAttribute("class", "chart " + (cls || ""));
  svg.setAttribute("role", "img");
  var total = rows.reduce(function (a, r) { return a + (r[key] || 0); }, 0);
  svg.setAttribute("aria-label", title + ": " + fmt(total) + " in total over " + rows.length + " periods");
  rows.forEach(function (r, i) {
    var v = r[key] || 0, bh = max ? Math.max(v ? 1 : 0, v / max * hgt) : 0;
    var rect = document.createElementNS(svg.namespaceURI, "rect");
    rect.setAttribute("x", i * bw + 1); rect.setAttribute("width", Math.max(bw - 2, 1));
    rect.setAttribute("y", hgt - bh); rect.setAttribute("height", bh);
    var tip = document.createElementNS(svg.namespaceURI, "title");
    tip.textContent = (r.hour || r.day) + ": " + fmt(v);
    rect.appendChild(tip);
    svg.appendChild(rect);
  });
  var lab = document.createElementNS(svg.namespaceURI, "text");
  lab.setAttribute("x", 0); lab.setAttribute("y", hgt + 12);
  lab.textContent = rows.length ? (rows[0].hour || rows[0].day) + " … " + (rows[rows.length - 1].hour || rows[rows.length - 1].day) + " · max " + fmt(max) : "no data";
  svg.appendChild(lab);
  return el("figure", null, el("figcaption", { text: title }), svg);
}

// Every hour (or day) of the period, zero where nothing ran, so the bars
// are a time axis rather than a list of the busy periods.
function fillBuckets(rows, bucket, since) {
  var have = {};
  rows.forEach(function (r) { have[r[bucket]] = r; });
  var step = bucket === "hour" ? 3600 : 86400;
  var first = since || (rows.length ? Date.parse(rows[0][bucket] + (bucket === "hour" ? ":00Z" : "T00:00:00Z")) / 1000 : Date.now() / 1000);
  var out = [];
  for (var t = Math.floor(first / step) * step; t <= Date.now() / 1000 && out.length < 400; t += step) {
    var key = new Date(t * 1000).toISOString().slice(0, bucket === "hour" ? 16 : 10);
    if (bucket === "hour") key = key.slice(0, 14) + "00";
    var r = have[key] || { requests: 0, input_tokens: 0, cost: 0, errors: 0 };
    r[bucket] = key;
    out.push(r);
  }
  return out;
}

function usageTable(by, rows, total) {
  var cols = [["requests", "Requests", fmtNum], ["errors", "Errors", fmtNum], ["partials", "Cut", fmtNum],
              ["input_tokens", "Input tokens", fmtNum], ["output_tokens", "Output tokens", fmtNum],
              ["cache_read_tokens", "Cache read", fmtNum], ["cache_hit_ratio", "Cache hit", fmtRatio],
              ["cost", "Cost", fmtCost], ["ttfb_p50_ms", "TTFB p50 ms", fmtMs], ["ttfb_p95_ms", "TTFB p95 ms", fmtMs]];
  var line = function (label, r, tag) {
    return el("tr", null, el(tag, tag === "th" ? { scope: "row", text: label } : { text: label }),
      cols.map(function (c) { return el("td", { class: "num", "data-col": c[0], text: c[2](r[c[0]]) }); }));
  };
  return el("div", { class: "table-wrap" }, el("table", { id: "usage-table" },
    el("caption", { class: "sr-only", text: "Usage by " + by }),
    el("thead", null, el("tr", null, el("th", { scope: "col", text: by }),
      cols.map(function (c) { return el("th", { scope: "col", class: "num", text: c[1] }); }))),
    el("tbody", null, rows.map(function (r) { return line(r[by] == null ? "(none)" : r[by], r, "th"); })),
    el("tfoot", { id: "usage-total" }, line("Total", total, "td"))));
}

views.usage = function () {
  var since = usageState.range === "all" ? 0 : Date.now() / 1000 - Number(usageState.range);
  var bucket = usageState.range !== "all" && Number(usageState.range) <= 86400 ? "hour" : "day";
  var q = function (g) { return "usage?since=" + since.toFixed(3) + (g ? "&group_by=" + g : ""); };
  return Promise.all([api(q("")), api(q(bucket)), api(q(usageState.by))]).then(function (res) {
    var total = res[0].rows[0] || { requests: 0, errors: 0, partials: 0, input_tokens: 0, output_tokens: 0,
                                     cache_read_tokens: 0, cost: null };
    var series = fillBuckets(res[1].rows, bucket, since), breakdown = res[2].rows;
    var sel = function (id, label, key, opts) {
      return el("label", { for: id }, label, el("select", { id: id, onchange: function (ev) { usageState[key] = ev.target.value; route(); } },
        opts.map(function (o) { return el("option", { value: o[0], selected: usageState[key] === o[0] }, o[1]); })));
    };
    var card = function (k, v, id) { return el("div", { class: "card" }, el("div", { class: "v", id: id, text: v }), el("div", { class: "k", text: k })); };
    main.replaceChildren(el("h1", { text: "Usage" }),
      el("form", { class: "row", onsubmit: function (e) { e.preventDefault(); } },
        sel("u-range", "Period", "range", [["3600", "last hour"], ["86400", "last 24 hours"], ["604800", "last 7 days"], ["2592000", "last 30 days"], ["all", "all history"]]),
        sel("u-by", "Break down by", "by", [["model", "model"], ["supplier", "supplier"], ["client", "client"], ["key", "gateway key"], ["service", "service"]])),
      el("div", { class: "cards spaced" },
        card("requests", fmtNum(total.requests), "total-requests"), card("errors", fmtNum(total.errors), "total-errors"),
        card("cut answers", fmtNum(total.partials)), card("tokens in / out", fmtNum(total.input_tokens) + " / " + fmtNum(total.output_tokens), "total-tokens"),
        card("cache hit", fmtRatio(total.cache_hit_ratio)), card("cost", fmtCost(total.cost), "total-cost")),
      el("h2", { text: "Over time (per " + bucket + ", UTC)" }),
      el("div", { class: "charts" },
        barChart("Requests", series, "requests", "", fmtNum),
        barChart("Tokens (input)", series, "input_tokens", "", fmtNum),
        barChart("Cost", series, "cost", "", fmtCost),
        barChart("Errors", series, "errors", "errors", fmtNum)),
      el("h2", { text: "By " + usageState.by }),
      usageTable(usageState.by, breakdown, total));
  });
};

// ---- Health ---------------------------------------------------------------

function metricValue(text, name) {
  var m = text.match(new RegExp("^" + name + "(?:\\{[^}]*\\})? ([0-9.eE+-]+)$", "m"));
  return m ? Number(m[1]) : null;
}
function metricSum(text, name, label) {
  var re = new RegExp("^" + name + "\\{([^}]*)\\} ([0-9.eE+-]+)$", "gm"), m, out = {};
  while ((m = re.exec(text))) {
    var l = (m[1].match(new RegExp(label + '="([^"]*)"')) || [])[1] || "";
    out[l] = (out[l] || 0) + Number(m[2]);
  }
  return out;
}

views.health = function () {
  return Promise.all([api("health"), api("metrics"), runningConfig(true)]).then(function (res) {
    var h = res[0], m = res[1], cfg = res[2];
    var reloads = metricSum(m, "sluice_reloads_total", "result");
    var bySupplier = metricSum(m, "sluice_requests_total", "supplier");
    var result = el("div", { id: "reload-result", role: "status" });
    var card = function (k, v, id) { return el("div", { class: "card" }, el("div", { class: "v", id: id, text: v }), el("div", { class: "k", text: k })); };
    var button = el("button", { type: "button", id: "reload", class: "primary", onclick: function () {
      button.disabled = true;
      result.replaceChildren(el("p", { class: "status-line", text: "Reloading…" }));
      api("reload", { method: "POST", anyStatus: true }).then(function (r) {
        button.disabled = false;
        if (r.body && r.body.reloaded) {
          result.replaceChildren(el("p", { class: "msg ok", text: "Reloaded: " + r.body.workers + " worker(s) run the new config." }));
          runningConfig(true);
        } else {
          var msg = r.body && r.body.error ? r.body.error.message : "HTTP " + r.status;
          result.replaceChildren(el("p", { class: "msg err", role: "alert" },
            el("strong", { text: "The new config was refused; the running one keeps serving. " }), el("br"), msg));
        }
      }, function (e) { button.disabled = false; if (!(e instanceof Refused)) result.replaceChildren(el("p", { class: "msg err", role: "alert", text: String(e.message) })); });
    } }, "Reload config");
    // What /_sluice/health says of the store this worker uses right now.
    var sessions = h.session_store === "redis"
      ? "Redis: " + h.redis + " (" + h.redis_connections + " worker connection(s) up)" +
        (h.redis === "up" ? "" : " — sessions use the in-process store until it is back")
      : "in-process (this sluice's shared memory)";
    // Each worker's own curl pool (/_sluice/health "upstream"), and the sums.
    var up = h.upstream || { workers: [] };
    var poolCols = [["connections", "Connections open"], ["idle", "Idle"], ["transfers", "Transfers in flight"],
                    ["paused", "Paused"], ["handles_pooled", "Pooled curl handles"], ["connects_total", "Connect attempts"]];
    var poolRow = function (label, f, id) {
      return el("tr", id ? { id: id } : null, el("th", { scope: "row", text: label }),
        poolCols.map(function (c) { return el("td", { class: "num", text: fmtNum(f[c[0]]) }); }));
    };
    main.replaceChildren(el("h1", { text: "Health" }),
      el("div", { class: "cards" },
        card("status", h.status, "health-status"), card("version", h.version), card("workers", String(h.workers), "health-workers"),
        card("active streams", fmtNum(metricValue(m, "sluice_active_streams")), "health-streams"),
        card("open connections", fmtNum(metricValue(m, "sluice_active_connections"))),
        card("upstream connections (idle)", fmtNum(up.connections) + " (" + fmtNum(up.idle) + ")", "health-upstream-connections"),
        card("upstream transfers", fmtNum(up.transfers), "health-upstream-transfers"),
        card("reloads ok / failed", fmtNum(reloads.ok || 0) + " / " + fmtNum(reloads.failed || 0), "health-reloads")),
      el("h2", { text: "Upstream pools" }),
      el("p", { class: "status-line", text: "Each worker keeps its own connections to the suppliers: idle ones wait for the next request to the same origin; a paused transfer waits for a slow client." }),
      el("div", { class: "table-wrap" }, el("table", { id: "upstream-pools" },
        el("thead", null, el("tr", null, [el("th", { scope: "col", text: "Worker" })].concat(poolCols.map(function (c) { return el("th", { scope: "col", class: "num", text: c[1] }); })))),
        el("tbody", null, up.workers.map(function (w) { return poolRow("worker " + w.worker, w); }).concat(
          up.workers.length > 1 ? [poolRow("all", up, "upstream-pools-total")] : [])))),
      el("h2", { text: "Suppliers" }),
      el("div", { class: "table-wrap" }, el("table", null,
        el("thead", null, el("tr", null, ["Supplier", "Protocol", "Base URL", "Requests since start"].map(function (t) { return el("th", { scope: "col", text: t }); }))),
        el("tbody", null, Object.keys(cfg.suppliers || {}).sort().map(function (id) {
          var s = cfg.suppliers[id];
          return el("tr", null, el("th", { scope: "row", text: id }), el("td", { text: s.protocol }), el("td", { text: s.base_url }),
                    el("td", { class: "num", text: fmtNum(bySupplier[id] || 0) }));
        })))),
      el("h2", { text: "Session store" }), el("p", { id: "sessions", text: sessions }),
      el("h2", { text: "Reload" }),
      el("p", { text: "Reads the config file again and runs it in every worker, or in none: a refused config leaves the running one serving." }),
      button, result,
      el("h2", { text: "Running config (secrets redacted)" }),
      el("pre", { id: "config", tabindex: 0, text: JSON.stringify(cfg, null, 2) }));
  });
};

// ---- start ----------------------------------------------------------------

document.getElementById("signout").addEventListener("click", function () { askToken(null); });
window.addEventListener("hashchange", route);
// No token stored: ask for one unless sluice has none configured.
(token() ? Promise.resolve(200) : fetch("/_sluice/health").then(function (r) { return r.status; }, function () { return 0; }))
  .then(function (status) {
    if (status === 401) askToken(null);
    else { document.getElementById("signout").hidden = !token(); route(); }
  });
