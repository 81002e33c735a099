/*! Embudo web tracker: docs/ingest.md, "Web tracker" */
(() => {
  "use strict";
  const w = window, d = document, loc = location, me = d.currentScript, queued = w.embudo;
  if (!me || queued?.page) return;
  const key = me.dataset.key || "", required = me.dataset.consent === "required";
  const AID = "embudo_aid", OUT = "embudo_optout", STORE = "embudo_utm", YEAR = 31536000;
  const UTM = ["source", "medium", "campaign", "term", "content"], FORMS = "form[data-embudo]";
  const endpoint = (path) => new URL(`${path}?key=${encodeURIComponent(key)}`, me.src).href;
  const cookie = (name) => (d.cookie.match(`(?:^|; )${name}=([^;]*)`) || [])[1];
  const setCookie = (name, value, age) => {
    d.cookie = `${name}=${value}; Max-Age=${age}; Path=/; SameSite=Lax${loc.protocol === "https:" ? "; Secure" : ""}`;
  };
  const cut = (s, n) => Array.from(s).slice(0, n).join(""); // by code point, like ingest
  const session = (f) => { try { return f(sessionStorage); } catch (e) { return null; } };

  // Consent required: the cookie records it
  let id = cookie(AID), on = required ? !!id : !cookie(OUT);
  if (id && !/^[\w-]{1,64}$/.test(id)) id = null;
  // The session's landing UTM
  let utm = session((s) => JSON.parse(s.getItem(STORE)));

  // utm_* only: other parameters may be personal
  const params = () => {
    const q = new URLSearchParams();
    new URLSearchParams(loc.search).forEach((v, n) => n.startsWith("utm_") && q.append(n, v));
    return q;
  };
  const pageUrl = (q = params() + "") => loc.origin + loc.pathname + (q && "?" + q);
  const remember = () => {
    const q = params(), landed = {};
    for (const n of UTM) {
      const v = q.get("utm_" + n)?.trim();
      if (v && !v.includes("\0")) landed[n] = cut(v, 200);
    }
    if (Object.keys(landed).length) utm = landed;
    if (on && utm) session((s) => s.setItem(STORE, JSON.stringify(utm)));
  };
  const start = () => {
    id ||= Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => (b + 256).toString(16).slice(1)).join("");
    setCookie(AID, id, YEAR);
    remember();
  };
  const post = async (path, body, beacon) => {
    const url = endpoint(path), data = JSON.stringify(body);
    if (beacon && navigator.sendBeacon?.(url, data)) return true;
    // text/plain JSON with ?key=: no CORS preflight
    return fetch(url, { method: "POST", body: data, keepalive: true, mode: "no-cors" })
      .then(() => true, () => false);
  };

  const page = async () => {
    if (!on || !/^https?:$/.test(loc.protocol)) return false;
    remember();
    const ref = d.referrer.split(/[?#]/)[0];
    return post("page-views", {
      anonymous_id: id, url: pageUrl(), title: d.title ? cut(d.title, 500) : undefined,
      referrer: /^https?:\/\//.test(ref) && ref.length <= 2048 ? ref : undefined,
    }, true);
  };

  const identify = async (email, traits = {}) => {
    if (!on) return false;
    const body = { form_id: String(traits.form_id || "embudo-identify"), email, anonymous_id: id,
      page_url: pageUrl(), utm: utm || undefined, fields: {} };
    for (const [k, v] of Object.entries(traits)) {
      if (k !== "form_id" && v != null) (["name", "company", "phone"].includes(k) ? body : body.fields)[k] = String(v);
    }
    return post("form-submissions", body);
  };

  // data-embudo forms (their own inputs win)
  const hidden = (form, name, value) => {
    let el = form.querySelector(`input[data-embudo-added][name="${name}"]`);
    if (!value) return el && el.remove();
    if (!el) {
      if (form.elements[name]) return;
      el = Object.assign(d.createElement("input"), { type: "hidden", name });
      el.dataset.embudoAdded = "";
      form.append(el);
    }
    el.value = value;
  };
  const decorate = (form) => {
    if (!form.getAttribute("action")) {
      form.setAttribute("action", endpoint("form-submissions"));
      form.method = "post";
    }
    hidden(form, "form_id", form.dataset.embudo);
    hidden(form, "anonymous_id", on && id);
    for (const n of UTM) hidden(form, "utm_" + n, on && utm && utm[n]);
  };
  const decorateAll = () => d.querySelectorAll(FORMS).forEach(decorate);
  d.addEventListener("submit", (e) => e.target.matches(FORMS) && decorate(e.target), true);

  const consent = (given) => {
    if (given && !on) {
      on = true;
      setCookie(OUT, "", 0);
      start();
      page();
    } else if (!given) {
      on = false;
      id = null;
      setCookie(AID, "", 0);
      session((s) => s.removeItem(STORE));
      if (!required) setCookie(OUT, 1, YEAR); // remembered
    }
    decorateAll();
  };

  w.embudo = { page, identify, consent, anonymousId: () => (on ? id : null) };
  if (on) { start(); page(); } else remember();
  if (d.readyState === "loading") d.addEventListener("DOMContentLoaded", decorateAll);
  else decorateAll();
  // Queued before it loaded: (window.embudo ||= []).push(["consent", true])
  if (Array.isArray(queued)) for (const [name, ...args] of queued) w.embudo[name] && w.embudo[name](...args);
})();
