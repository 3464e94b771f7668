// Layout probe, injected at the end of a page copied for a test (see
// chromium.rs). After the page has loaded it measures what a reader would
// see and posts a JSON report to the parent page, which Chromium's
// --dump-dom then prints. `window.__tidingsProbe` holds what to look for:
// { texts: ["…", …] }.
(function () {
  "use strict";
  var config = window.__tidingsProbe || { texts: [] };

  function norm(s) {
    return (s || "").replace(/\u00ad/g, "").replace(/[\s\u00a0]+/g, " ").trim();
  }

  function describe(el) {
    var s = el.tagName.toLowerCase();
    if (el.id) s += "#" + el.id;
    var cls = typeof el.className === "string" ? el.className.trim() : "";
    if (cls) s += "." + cls.split(/\s+/).slice(0, 3).join(".");
    return s;
  }

  function round(r) {
    return { left: Math.round(r.left), right: Math.round(r.right), width: Math.round(r.width), height: Math.round(r.height) };
  }

  // Why `el` (whose text box is `rect`) cannot be seen, or null if it can.
  function hiddenBecause(el, rect) {
    if (rect.width < 1 || rect.height < 1) return "it has no size (display:none on it or an ancestor, or zero size)";
    for (var a = el; a && a.nodeType === 1; a = a.parentElement) {
      var cs = getComputedStyle(a);
      if (a === el && cs.visibility !== "visible") return "visibility:" + cs.visibility;
      if (parseFloat(cs.opacity) === 0) return "opacity:0 on " + describe(a);
      if (a !== el && cs.overflow !== "visible") {
        var box = a.getBoundingClientRect();
        var w = Math.min(rect.right, box.right) - Math.max(rect.left, box.left);
        var h = Math.min(rect.bottom, box.bottom) - Math.max(rect.top, box.top);
        if (w < 1 || h < 1) return "clipped by overflow:" + cs.overflow + " on " + describe(a);
      }
    }
    var size = parseFloat(getComputedStyle(el).fontSize);
    if (size < 6) return "font-size " + size + "px";
    return null;
  }

  function textReport(target, vw) {
    var want = norm(target);
    var all = document.body.getElementsByTagName("*");
    var candidates = [];
    for (var i = 0; i < all.length; i++) {
      var el = all[i];
      if (el.tagName === "SCRIPT" || el.tagName === "STYLE") continue;
      if (norm(el.textContent).indexOf(want) < 0) continue;
      var inChild = false;
      for (var c = el.firstElementChild; c; c = c.nextElementSibling) {
        if (norm(c.textContent).indexOf(want) >= 0) { inChild = true; break; }
      }
      if (!inChild) candidates.push(el);
    }
    var seen = [];
    var visible = false;
    candidates.forEach(function (el) {
      var range = document.createRange();
      range.selectNodeContents(el);
      var rect = range.getBoundingClientRect();
      var why = hiddenBecause(el, rect);
      if (!why && (rect.left < -0.5 || rect.right > vw + 0.5)) {
        why = "outside the viewport horizontally (" + Math.round(rect.left) + ".." + Math.round(rect.right) + " px of " + vw + ")";
      }
      if (!why) visible = true;
      seen.push({ element: describe(el), box: round(rect), hidden_because: why });
    });
    return { text: target, visible: visible, found: seen };
  }

  function report() {
    var d = document.documentElement;
    var vw = window.innerWidth;
    var r = {
      inner_width: vw,
      client_width: d.clientWidth,
      scroll_width: Math.max(d.scrollWidth, document.body ? document.body.scrollWidth : 0),
      scroll_height: Math.max(d.scrollHeight, document.body ? document.body.scrollHeight : 0),
      // How tall the content is, even when shorter than the viewport.
      content_height: document.body
        ? Math.ceil(document.body.getBoundingClientRect().bottom + parseFloat(getComputedStyle(document.body).marginBottom))
        : 0,
      too_wide: [],
      texts: [],
      links: [],
      error: null,
    };
    // What sticks out on the right: the outermost such elements, so the
    // report names the culprit rather than all of its descendants.
    var all = document.body.getElementsByTagName("*");
    for (var i = 0; i < all.length && r.too_wide.length < 8; i++) {
      var b = all[i].getBoundingClientRect();
      if (b.width > 0 && b.right > vw + 0.5) {
        var p = all[i].parentElement, outer = true;
        for (; p && p !== document.body; p = p.parentElement) {
          if (p.getBoundingClientRect().right > vw + 0.5) { outer = false; break; }
        }
        if (outer) r.too_wide.push({ element: describe(all[i]), box: round(b) });
      }
    }
    (config.texts || []).forEach(function (t) { r.texts.push(textReport(t, vw)); });
    var links = document.querySelectorAll("a[href]");
    for (var j = 0; j < links.length; j++) {
      var row = links[j].closest("tr");
      r.links.push({
        href: links[j].getAttribute("href"),
        url: links[j].href,
        text: norm(links[j].textContent),
        row: row ? norm(row.textContent) : "",
      });
    }
    return r;
  }

  function send(r) {
    var json = JSON.stringify(r);
    if (window.parent !== window) window.parent.postMessage(json, "*");
  }

  window.addEventListener("load", function () {
    try { send(report()); } catch (e) { send({ error: String(e && e.stack || e) }); }
  });
})();
