/*
 * Preview console: plays the EHR against this CDS service and shows its cards the way a
 * CDS Hooks client renders them.
 *
 * Plain browser JavaScript, no framework, no build step, nothing from a CDN: the service serves
 * this file as is, under a Content-Security-Policy that allows only same-origin scripts and
 * no inline script or style.
 *
 * Card Markdown is rendered by the small renderer below instead of a library, because a library
 * would need a bundler or a CDN. It never parses HTML: every piece of card text becomes a DOM
 * text node (so "<script>" or "<img onerror=...>" shows as those characters and cannot run), and
 * the only elements it creates are p, strong, em, code, pre, ul, ol, li, hr, h4-h6 and a. A link
 * is made only for an absolute http(s) URL (javascript:, data: and relative URLs stay text), and
 * opens in a new tab with rel="noopener noreferrer". The same rule applies to source and link URLs
 * in cards. innerHTML is never used anywhere in this file.
 */
(function () {
  "use strict";

  var RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm";
  var SNOMED = "http://snomed.info/sct";
  var CPT = "http://www.ama-assn.org/go/cpt";
  var STORE_KEY = "sleep-cds-console.fhirServer";

  // Demo order-entry choices (UI fixtures, like an EHR's order catalogue).
  var DRAFT_ORDERS = [
    { key: "sertraline", label: "Sertraline 50 mg", note: "SSRI", type: "MedicationRequest",
      system: RXNORM, code: "36437", display: "sertraline", dosage: "50 mg by mouth once daily" },
    { key: "mirtazapine", label: "Mirtazapine 15 mg", note: "antidepressant",
      type: "MedicationRequest", system: RXNORM, code: "15996", display: "mirtazapine",
      dosage: "15 mg by mouth at bedtime" },
    { key: "diphenhydramine", label: "Diphenhydramine 25 mg", note: "sedating antihistamine",
      type: "MedicationRequest", system: RXNORM, code: "3498", display: "diphenhydramine",
      dosage: "25 mg by mouth at bedtime as needed for sleep" },
    { key: "quetiapine", label: "Quetiapine 25 mg", note: "antipsychotic",
      type: "MedicationRequest", system: RXNORM, code: "51272", display: "quetiapine",
      dosage: "25 mg by mouth at bedtime" },
    { key: "bupropion", label: "Bupropion XL 150 mg", note: "antidepressant",
      type: "MedicationRequest", system: RXNORM, code: "42347", display: "bupropion",
      dosage: "150 mg by mouth every morning" },
    { key: "polysomnography", label: "Polysomnography, in-lab", note: "sleep study",
      type: "ServiceRequest", system: SNOMED, code: "60554003", display: "Polysomnography" },
    { key: "home-sleep-test", label: "Home sleep apnea test", note: "sleep study",
      type: "ServiceRequest", system: CPT, code: "95806",
      display: "Sleep study, unattended, home sleep apnea test" }
  ];

  var INDICATOR_LABEL = { info: "Info", warning: "Warning", critical: "Critical" };

  var state = {
    config: { fhirServer: null, fhirServerFixed: false, explain: true, userId: "Practitioner/example" },
    services: {},          // hook -> service id
    fhirServer: null,
    patient: null,
    chartToken: 0,
    busy: false,
    calls: 0,
    feedbackLog: [],
    adminToken: window.sessionStorage.getItem("cds-console-admin-token"),
    dismissing: null       // {card, serviceId, element}
  };

  // --- tiny DOM helpers ------------------------------------------------------------------------

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (name) {
        var value = attrs[name];
        if (value === null || value === undefined || value === false) { return; }
        if (name === "text") { node.textContent = String(value); }
        else if (name === "className") { node.className = value; }
        else if (name === "dataset") {
          Object.keys(value).forEach(function (k) { node.dataset[k] = String(value[k]); });
        } else { node.setAttribute(name, value === true ? "" : String(value)); }
      });
    }
    (children || []).forEach(function (child) {
      if (child === null || child === undefined || child === false) { return; }
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function clear(node) { while (node.firstChild) { node.removeChild(node.firstChild); } }

  function setStatus(message, kind) {
    var box = $("status");
    box.textContent = message || "";
    box.className = "status" + (kind ? " status-" + kind : "");
  }

  function uuid4() {
    var b = new Uint8Array(16);
    window.crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    var h = Array.prototype.map.call(b, function (x) { return (x + 0x100).toString(16).slice(1); });
    return h.slice(0, 4).join("") + "-" + h.slice(4, 6).join("") + "-" + h.slice(6, 8).join("") +
      "-" + h.slice(8, 10).join("") + "-" + h.slice(10, 16).join("");
  }

  function pretty(value) { return JSON.stringify(value, null, 2); }

  /** An absolute http(s) URL, normalised; null for anything else (javascript:, data:, relative). */
  function safeUrl(raw) {
    if (typeof raw !== "string" || !raw) { return null; }
    var url;
    try { url = new URL(raw); } catch (e) { return null; }
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  }

  function externalLink(href, children, className) {
    return el("a", { href: href, target: "_blank", rel: "noopener noreferrer",
      className: className || null }, children);
  }

  // --- Markdown (safe subset) -----------------------------------------------------------------

  var PUNCT = /[!-\/:-@\[-`{-~]/;

  function findClosing(text, marker, from) {
    for (var j = from; j <= text.length - marker.length; j++) {
      if (text[j] === "\\") { j++; continue; }
      if (text.substr(j, marker.length) === marker) { return j; }
    }
    return -1;
  }

  /** Inline Markdown of `text` appended to `parent` as DOM nodes (text nodes for all text). */
  function inline(text, parent, noLinks) {
    var buf = "";
    var i = 0;
    function flush() {
      if (buf) { parent.appendChild(document.createTextNode(buf)); buf = ""; }
    }
    while (i < text.length) {
      var c = text[i];
      if (c === "\\" && i + 1 < text.length && PUNCT.test(text[i + 1])) {
        buf += text[i + 1]; i += 2; continue;
      }
      if (c === "`") {
        var endCode = text.indexOf("`", i + 1);
        if (endCode > i + 1) {
          flush();
          parent.appendChild(el("code", { text: text.slice(i + 1, endCode) }));
          i = endCode + 1; continue;
        }
      }
      if ((c === "*" || (c === "_" && !/\w/.test(text[i - 1] || ""))) && text[i + 1] === c) {
        var endStrong = findClosing(text, c + c, i + 2);
        if (endStrong > i + 2 && (c === "*" || !/\w/.test(text[endStrong + 2] || ""))) {
          flush();
          var strong = el("strong");
          inline(text.slice(i + 2, endStrong), strong, noLinks);
          parent.appendChild(strong);
          i = endStrong + 2; continue;
        }
      }
      if ((c === "*" || (c === "_" && !/\w/.test(text[i - 1] || ""))) &&
          text[i + 1] && text[i + 1] !== " " && text[i + 1] !== c) {
        var endEm = findClosing(text, c, i + 1);
        if (endEm > i + 1 && text[endEm - 1] !== " " &&
            (c === "*" || !/\w/.test(text[endEm + 1] || ""))) {
          flush();
          var em = el("em");
          inline(text.slice(i + 1, endEm), em, noLinks);
          parent.appendChild(em);
          i = endEm + 1; continue;
        }
      }
      if (c === "[" && !noLinks) {
        var m = /^\[((?:\\.|[^\]\\])*)\]\(\s*(<[^>]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)(?:\s+"[^"]*")?\s*\)/
          .exec(text.slice(i));
        if (m) {
          flush();
          var target = m[2].charAt(0) === "<" ? m[2].slice(1, -1) : m[2];
          var href = safeUrl(target);
          if (href) {
            var link = externalLink(href, []);
            inline(m[1], link, true);
            parent.appendChild(link);
          } else {
            inline(m[1], parent, true);  // unsafe or relative target: the label stays, as text
          }
          i += m[0].length; continue;
        }
      }
      buf += c; i++;
    }
    flush();
  }

  var RE_HR = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
  var RE_HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  var RE_BULLET = /^ {0,3}[-*+]\s+(.*)$/;
  var RE_ORDERED = /^ {0,3}(\d{1,9})[.)]\s+(.*)$/;
  var RE_FENCE = /^ {0,3}(```|~~~)/;

  /** Card Markdown → a DocumentFragment (paragraphs, lists, headings, rules, code, links). */
  function renderMarkdown(source) {
    var root = document.createDocumentFragment();
    var lines = String(source || "").replace(/\r\n?/g, "\n").split("\n");
    var para = [];
    var list = null;
    var item = null;

    function flushPara() {
      if (para.length) {
        var p = el("p");
        inline(para.join(" ").trim(), p, false);
        root.appendChild(p);
        para = [];
      }
    }
    function closeList() { list = null; item = null; }

    for (var n = 0; n < lines.length; n++) {
      var line = lines[n];
      var m;
      if (RE_FENCE.test(line)) {
        flushPara(); closeList();
        var fence = RE_FENCE.exec(line)[1];
        var code = [];
        n++;
        while (n < lines.length && lines[n].trim().indexOf(fence) !== 0) { code.push(lines[n]); n++; }
        root.appendChild(el("pre", null, [el("code", { text: code.join("\n") })]));
        continue;
      }
      if (!line.trim()) { flushPara(); closeList(); continue; }
      if (RE_HR.test(line)) { flushPara(); closeList(); root.appendChild(el("hr")); continue; }
      if ((m = RE_HEADING.exec(line))) {
        flushPara(); closeList();
        var h = el("h" + Math.min(6, m[1].length + 3));
        inline(m[2], h, false);
        root.appendChild(h);
        continue;
      }
      var bullet = RE_BULLET.exec(line);
      var ordered = bullet ? null : RE_ORDERED.exec(line);
      if (bullet || ordered) {
        flushPara();
        var tag = bullet ? "ul" : "ol";
        if (!list || list.tagName.toLowerCase() !== tag) {
          list = el(tag);
          if (ordered && ordered[1] !== "1") { list.setAttribute("start", String(Number(ordered[1]))); }
          root.appendChild(list);
        }
        item = el("li");
        inline(bullet ? bullet[1] : ordered[2], item, false);
        list.appendChild(item);
        continue;
      }
      if (item && /^\s+\S/.test(line)) {  // continuation of a list item
        item.appendChild(document.createTextNode(" "));
        inline(line.trim(), item, false);
        continue;
      }
      closeList();
      para.push(line.trim());
    }
    flushPara();
    return root;
  }

  // --- HTTP ----------------------------------------------------------------------------------

  function problemText(data, status) {
    if (data && data.resourceType === "OperationOutcome" && data.issue && data.issue.length) {
      return data.issue[0].diagnostics || data.issue[0].code || ("HTTP " + status);
    }
    return "HTTP " + status;
  }

  function api(method, path, body) {
    var init = { method: method, headers: { Accept: "application/json" }, credentials: "same-origin" };
    // Outside local mode the console's data routes need the admin token (asked once per tab).
    if (state.adminToken && path.indexOf("/console/api/") === 0) {
      init.headers.Authorization = "Bearer " + state.adminToken;
    }
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (response) {
      return response.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
        return { ok: response.ok, status: response.status, data: data,
          error: response.ok ? null : problemText(data, response.status) };
      });
    }, function (err) {
      return { ok: false, status: 0, data: null, error: "Network error: " + err.message };
    });
  }

  // --- setup: FHIR server and patients --------------------------------------------------------

  function loadPatients() {
    var input = $("fhir-server");
    var base = input.value.trim();
    if (!base) {
      setStatus("Enter the FHIR server's base URL, for example http://127.0.0.1:8092/fhir.", "error");
      input.focus();
      return Promise.resolve();
    }
    setStatus("Loading patients from " + base + " …");
    var select = $("patient");
    select.disabled = true;
    return api("GET", "/console/api/patients?fhirServer=" + encodeURIComponent(base)).then(function (r) {
      clear(select);
      if (!r.ok) {
        select.appendChild(el("option", { value: "", text: "No patients loaded" }));
        setStatus("Could not load patients: " + r.error, "error");
        return;
      }
      state.fhirServer = r.data.fhirServer;
      try { window.localStorage.setItem(STORE_KEY, state.fhirServer); } catch (e) { /* private mode */ }
      var patients = r.data.patients || [];
      select.appendChild(el("option", { value: "",
        text: patients.length ? "Choose a patient (" + patients.length + ")" : "No patients on this server" }));
      patients.forEach(function (p) {
        var facts = [p.gender ? p.gender.charAt(0).toUpperCase() : null,
          p.age !== null && p.age !== undefined ? p.age + " y" : null].filter(Boolean).join(", ");
        select.appendChild(el("option", { value: p.id,
          text: p.name + (facts ? " (" + facts + ")" : "") + " · " + p.id }));
      });
      select.disabled = patients.length === 0;
      setStatus("Loaded " + patients.length + " patient(s) from " + state.fhirServer + ".", "ok");
    });
  }

  function chartSection(title, rows, empty, render) {
    var section = el("section", { className: "chart-section" }, [el("h3", { text: title })]);
    if (!rows.length) {
      section.appendChild(el("p", { className: "empty", text: empty }));
    } else {
      section.appendChild(render(rows));
    }
    return section;
  }

  function renderChart(chart) {
    var box = $("chart");
    clear(box);
    if (chart.unavailable && chart.unavailable.length) {
      box.appendChild(el("p", { className: "note note-warning",
        text: "Not read from the FHIR server: " + chart.unavailable.join("; ") }));
    }
    box.appendChild(chartSection("Active problems", chart.problems, "None recorded", function (rows) {
      return el("ul", { className: "chart-list", id: "chart-problems" }, rows.map(function (r) {
        return el("li", null, [el("span", { className: "item-main", text: r.text }),
          r.onset ? el("span", { className: "item-meta", text: "since " + r.onset }) : null]);
      }));
    }));
    box.appendChild(chartSection("Medications", chart.medications, "None recorded", function (rows) {
      return el("ul", { className: "chart-list", id: "chart-medications" }, rows.map(function (r) {
        return el("li", null, [el("span", { className: "item-main", text: r.text }),
          el("span", { className: "item-meta", text: [r.dosage, r.kind === "statement" ? "reported" : null,
            r.date ? "from " + r.date : null].filter(Boolean).join(" · ") })]);
      }));
    }));
    box.appendChild(chartSection("Relevant labs", chart.labs, "No results on file", function (rows) {
      var body = el("tbody", null, rows.map(function (r) {
        return el("tr", null, [
          el("th", { scope: "row", text: r.name }),
          el("td", { className: "num" }, [r.value, r.flag ? el("span", { className: "flag", text: r.flag }) : null]),
          el("td", { className: "date", text: r.date || "—" })
        ]);
      }));
      return el("div", { className: "table-wrap" }, [el("table", { className: "labs", id: "chart-labs" }, [
        el("thead", null, [el("tr", null, [el("th", { scope: "col", text: "Test" }),
          el("th", { scope: "col", text: "Result" }), el("th", { scope: "col", text: "Date" })])]),
        body])]);
    }));
    if (chart.findings && chart.findings.length) {
      box.appendChild(chartSection("Findings and scores", chart.findings, "", function (rows) {
        return el("ul", { className: "chart-list" }, rows.map(function (r) {
          return el("li", null, [el("span", { className: "item-main",
            text: r.text + (r.value ? ": " + r.value : "") }),
            r.date ? el("span", { className: "item-meta", text: r.date }) : null]);
        }));
      }));
    }
  }

  function renderBanner(p) {
    $("banner-name").textContent = p.name;
    var facts = [
      p.gender ? p.gender.charAt(0).toUpperCase() + p.gender.slice(1) : null,
      p.age !== null && p.age !== undefined ? p.age + " y" : null,
      p.birthDate ? "DOB " + p.birthDate : null,
      p.mrn ? "MRN " + p.mrn : null,
      "FHIR id " + p.id
    ].filter(Boolean);
    $("banner-facts").textContent = facts.join("  ·  ");
    $("banner").hidden = false;
  }

  function resetPatientState() {
    // Nothing of the previous patient may follow the user to the next one: ticked draft orders
    // would be sent as this patient's drafts, and the feedback log and JSON panes are theirs.
    DRAFT_ORDERS.forEach(function (o) { $("order-" + o.key).checked = false; });
    state.feedbackLog = [];
    state.dismissing = null;
    $("feedback-json").textContent = "No feedback sent yet.";
    $("request-json").textContent = "No call yet.";
    $("response-json").textContent = "No call yet.";
    clear($("trace"));
    $("trace").textContent = "No call yet.";
  }

  function choosePatient(id) {
    var token = ++state.chartToken;
    state.patient = null;
    resetPatientState();
    updateButtons();
    resetCards("Fire a hook to see the cards a clinician would see.");
    if (!id) { $("banner").hidden = true; return Promise.resolve(); }
    setStatus("Reading the chart of " + id + " …");
    var path = "/console/api/chart/" + encodeURIComponent(id) + "?fhirServer=" +
      encodeURIComponent(state.fhirServer || "");
    return api("GET", path).then(function (r) {
      if (token !== state.chartToken) { return; }
      if (!r.ok) { setStatus("Could not read the chart: " + r.error, "error"); return; }
      state.patient = r.data.patient;
      renderBanner(r.data.patient);
      renderChart(r.data);
      updateButtons();
      setStatus("Chart loaded for " + r.data.patient.name + ".", "ok");
    });
  }

  // --- order pad --------------------------------------------------------------------------------

  function renderOrderPad() {
    var box = $("draft-orders");
    clear(box);
    DRAFT_ORDERS.forEach(function (order) {
      var id = "order-" + order.key;
      box.appendChild(el("div", { className: "draft" }, [
        el("input", { type: "checkbox", id: id, value: order.key, dataset: { order: order.key } }),
        el("label", { "for": id }, [el("span", { className: "draft-label", text: order.label }),
          el("span", { className: "draft-note", text: order.note })])
      ]));
    });
    box.addEventListener("change", updateButtons);
  }

  function checkedOrders() {
    return DRAFT_ORDERS.filter(function (o) { return $("order-" + o.key).checked; });
  }

  function draftResource(order, patientId) {
    var coding = { system: order.system, code: order.code, display: order.display };
    var resource = {
      resourceType: order.type,
      id: "draft-" + order.key,
      status: "draft",
      intent: "order",
      subject: { reference: "Patient/" + patientId },
      authoredOn: new Date().toISOString().slice(0, 10)
    };
    if (order.type === "MedicationRequest") {
      resource.medicationCodeableConcept = { coding: [coding], text: order.label };
      resource.dosageInstruction = [{ text: order.dosage }];
    } else {
      resource.code = { coding: [coding], text: order.label };
    }
    return resource;
  }

  function updateButtons() {
    // While a call runs the buttons stay focusable (aria-disabled): disabling the focused
    // button would drop keyboard focus back to the top of the page.
    var ready = !!state.patient && !!state.services["patient-view"];
    var hasOrders = checkedOrders().length > 0;
    $("fire-patient-view").disabled = !ready;
    $("fire-order-select").disabled = !(ready && hasOrders && state.services["order-select"]);
    $("fire-order-sign").disabled = !(ready && hasOrders && state.services["order-sign"]);
    Array.prototype.forEach.call(document.querySelectorAll(".btn-hook"), function (b) {
      if (state.busy) { b.setAttribute("aria-disabled", "true"); } else { b.removeAttribute("aria-disabled"); }
    });
  }

  // --- hooks ------------------------------------------------------------------------------------

  function buildRequest(hook) {
    var patientId = state.patient.id;
    var context = { userId: state.config.userId || "Practitioner/example", patientId: patientId };
    if (hook !== "patient-view") {
      var drafts = checkedOrders().map(function (o) { return draftResource(o, patientId); });
      context.draftOrders = { resourceType: "Bundle", type: "collection",
        entry: drafts.map(function (d) { return { resource: d }; }) };
      if (hook === "order-select") {
        context.selections = drafts.map(function (d) { return d.resourceType + "/" + d.id; });
      }
    }
    return { hook: hook, hookInstance: uuid4(), fhirServer: state.fhirServer, context: context };
  }

  function fireHook(hook) {
    var serviceId = state.services[hook];
    if (!serviceId || !state.patient || state.busy) { return Promise.resolve(); }
    var request = buildRequest(hook);
    state.busy = true;
    updateButtons();
    $("cards").setAttribute("aria-busy", "true");
    $("cards-meta").textContent = "Calling " + hook + " …";
    $("request-json").textContent = "POST /cds-services/" + serviceId + "\n\n" + pretty(request);
    $("response-json").textContent = "Waiting …";
    var started = performance.now();
    var call = api("POST", "/cds-services/" + encodeURIComponent(serviceId), request);
    var explain = state.config.explain
      ? api("POST", "/cds-services/" + encodeURIComponent(serviceId) + "/explain", request)
      : Promise.resolve(null);
    return Promise.all([call, explain]).then(function (results) {
      var r = results[0];
      var ms = Math.round(performance.now() - started);
      state.busy = false;
      state.calls += 1;
      $("response-json").textContent = "HTTP " + r.status + "\n\n" +
        (typeof r.data === "string" ? r.data : pretty(r.data));
      if (!r.ok) {
        resetCards(null);
        $("cards").appendChild(el("p", { className: "note note-error", role: "alert",
          text: hook + " failed: " + r.error }));
        $("cards-meta").textContent = hook + " · error";
      } else {
        var cards = (r.data && r.data.cards) || [];
        renderCards(cards, { serviceId: serviceId, hook: hook, interactive: true,
          hookInstance: request.hookInstance });
        $("cards-meta").textContent = hook + " · " + cards.length + " card" +
          (cards.length === 1 ? "" : "s") + " · " + ms + " ms";
        renderSuppressed(cards, results[1]);
      }
      renderTrace(results[1]);
      $("cards").setAttribute("aria-busy", "false");
      updateButtons();
    });
  }

  function resetCards(message) {
    var box = $("cards");
    clear(box);
    delete box.dataset.hookInstance;
    if (message) { box.appendChild(el("p", { className: "empty", text: message })); }
    $("cards-meta").textContent = "";
    $("hidden-cards").hidden = true;
    clear($("hidden-cards"));
  }

  function topicOf(card) {
    return card && card.source && card.source.topic ? card.source.topic.code : card && card.summary;
  }

  /** Advice the rules produced (explain) that earlier feedback hides: which rule, why, until when. */
  function renderSuppressed(cards, explained) {
    var box = $("hidden-cards");
    clear(box);
    box.hidden = true;
    if (!explained || !explained.ok || !explained.data) { return; }
    var hidden = explained.data.suppressed || [];
    if (!hidden.length) { return; }
    var titles = {};
    (explained.data.rules || []).forEach(function (r) {
      titles[String(r.rule || "").split("@")[0]] = { title: r.title, indicator: r.indicator };
    });
    box.appendChild(el("h3", { text: "Hidden by earlier feedback (" + hidden.length + ")" }));
    box.appendChild(el("p", { className: "hint", text: "The rules still fire, but feedback from " +
      "this EHR on the same advice with the same evidence hides it. New evidence shows it at once." }));
    box.appendChild(el("ul", null, hidden.map(function (h) {
      var rule = titles[h.rule] || { title: h.rule, indicator: "info" };
      var level = INDICATOR_LABEL[rule.indicator] ? rule.indicator : "info";
      var until = h.until ? String(h.until).replace("T", " ").slice(0, 16) + " UTC" : "";
      return el("li", { className: "indicator-" + level, "data-rule": String(h.rule) },
        [el("span", { className: "badge badge-small", text: INDICATOR_LABEL[level] }), " ",
          String(rule.title || h.rule) + " (" + String(h.topic) + ") — " + String(h.why || "") +
          (until ? " · hidden until " + until : "")]);
    })));
    box.hidden = false;
  }

  // --- cards ------------------------------------------------------------------------------------

  function renderCards(cards, ctx) {
    var box = $("cards");
    clear(box);
    if (ctx.hookInstance) { box.dataset.hookInstance = ctx.hookInstance; }
    box.dataset.calls = String(state.calls);
    if (!cards.length) {
      box.appendChild(el("p", { className: "empty empty-cards", text: "No cards for this call." }));
      return;
    }
    ctx.count = cards.length;
    cards.forEach(function (card, index) {
      box.appendChild(renderCard(card, ctx, index));
    });
  }

  function renderCard(card, ctx, index) {
    var indicator = INDICATOR_LABEL[card.indicator] ? card.indicator : "info";
    var headingId = "card-" + index + "-summary";
    var article = el("article", { className: "card indicator-" + indicator,
      "aria-labelledby": headingId,
      dataset: { indicator: indicator, uuid: card.uuid || "", topic: topicOf(card) || "" } });

    article.appendChild(el("div", { className: "card-head" }, [
      el("span", { className: "badge", text: INDICATOR_LABEL[indicator] }),
      el("h3", { id: headingId, className: "card-summary", text: String(card.summary || "") })
    ]));

    var source = card.source || {};
    var sourceUrl = safeUrl(source.url);
    var sourceLine = el("p", { className: "card-source" }, ["Source: "]);
    var label = String(source.label || "unknown");
    sourceLine.appendChild(sourceUrl ? externalLink(sourceUrl, [label]) : el("span", { text: label }));
    if (source.topic && source.topic.display) {
      sourceLine.appendChild(el("span", { className: "topic", text: String(source.topic.display) }));
    }
    article.appendChild(sourceLine);

    if (card.detail) {
      var details = el("details", { className: "card-detail" }, [
        el("summary", { text: "Details and evidence" }),
        el("div", { className: "markdown" }, [renderMarkdown(card.detail)])
      ]);
      if (ctx.count === 1) { details.open = true; }
      article.appendChild(details);
    }

    var suggestions = Array.isArray(card.suggestions) ? card.suggestions : [];
    var actionsRow = el("div", { className: "card-actions" });
    suggestions.forEach(function (s) {
      var button = el("button", { type: "button",
        className: "btn btn-suggestion" + (s.isRecommended ? " btn-recommended" : ""),
        dataset: { suggestion: s.uuid || "" },
        title: (s.actions || []).map(function (a) { return a.description || a.type; }).join("; ") || null
      }, [String(s.label || "Suggestion")]);
      if (s.isRecommended) { button.appendChild(el("span", { className: "sr-only", text: " (recommended)" })); }
      button.disabled = !ctx.interactive;
      button.addEventListener("click", function () { acceptSuggestion(card, s, ctx, article); });
      actionsRow.appendChild(button);
    });
    var dismiss = el("button", { type: "button", className: "btn btn-dismiss", text: "Dismiss" });
    dismiss.disabled = !ctx.interactive;
    dismiss.addEventListener("click", function () { openDismiss(card, ctx, article, dismiss); });
    actionsRow.appendChild(dismiss);
    article.appendChild(actionsRow);

    var links = Array.isArray(card.links) ? card.links : [];
    if (links.length) {
      article.appendChild(el("ul", { className: "card-links" }, links.map(function (link) {
        var href = safeUrl(link.url);
        var text = String(link.label || link.url || "link");
        if (!href) { return el("li", null, [el("span", { text: text })]); }
        if (link.type === "smart") {
          return el("li", null, [el("span", { text: text }),
            el("span", { className: "item-meta", text: " (SMART app: launch is not available here)" })]);
        }
        return el("li", null, [externalLink(href, [text, el("span", { className: "ext", "aria-hidden": "true", text: " ↗" })])]);
      })));
    }
    article.appendChild(el("p", { className: "card-status", role: "status" }));
    if (!ctx.interactive) {
      article.querySelector(".card-status").textContent = "Preview only: no feedback is sent for pasted cards.";
    }
    return article;
  }

  function finishCard(article, text, kind) {
    article.classList.add("card-" + kind);
    Array.prototype.forEach.call(article.querySelectorAll(".card-actions button"), function (b) {
      b.disabled = true;
    });
    var status = article.querySelector(".card-status");
    status.textContent = text;
    return status;
  }

  /** Keep keyboard focus on the card once its buttons are disabled. */
  function focusSummary(article) {
    var summary = article.querySelector(".card-summary");
    summary.setAttribute("tabindex", "-1");
    summary.focus();
  }

  function sendFeedback(serviceId, item) {
    var body = { feedback: [item] };
    return api("POST", "/cds-services/" + encodeURIComponent(serviceId) + "/feedback", body).then(function (r) {
      state.feedbackLog.unshift({ request: "POST /cds-services/" + serviceId + "/feedback", body: body,
        status: r.status, response: r.data });
      $("feedback-json").textContent = state.feedbackLog.map(function (e) {
        return e.request + "\n" + pretty(e.body) + "\n→ HTTP " + e.status + " " + pretty(e.response);
      }).join("\n\n");
      return r;
    });
  }

  function acceptSuggestion(card, suggestion, ctx, article) {
    var buttons = article.querySelectorAll(".card-actions button");
    Array.prototype.forEach.call(buttons, function (b) { b.disabled = true; });
    return sendFeedback(ctx.serviceId, {
      card: card.uuid,
      outcome: "accepted",
      acceptedSuggestions: [{ id: suggestion.uuid }],
      outcomeTimestamp: new Date().toISOString()
    }).then(function (r) {
      if (!r.ok) {
        Array.prototype.forEach.call(buttons, function (b) { b.disabled = false; });
        article.querySelector(".card-status").textContent = "Feedback not stored: " + r.error;
        return;
      }
      var status = finishCard(article, "Accepted: " + suggestion.label, "accepted");
      focusSummary(article);
      var applied = applyActions(suggestion.actions || []);
      if (applied.length) {
        status.appendChild(el("ul", { className: "applied" }, applied.map(function (t) {
          return el("li", { text: t });
        })));
      }
    });
  }

  /** Do what an EHR would do with the suggestion's actions: drop deleted drafts from the pad. */
  function applyActions(actions) {
    return actions.map(function (action) {
      var what = action.description || action.type;
      if (action.type === "delete" && typeof action.resourceId === "string") {
        DRAFT_ORDERS.forEach(function (o) {
          var box = $("order-" + o.key);
          var ids = ["MedicationRequest/draft-" + o.key, "ServiceRequest/draft-" + o.key];
          if (ids.indexOf(action.resourceId) >= 0 && box.checked) { box.checked = false; }
        });
        updateButtons();
        return "Removed from the order pad: " + action.resourceId;
      }
      if (action.type === "create" && action.resource) {
        return "Would create " + (action.resource.resourceType || "a resource") + ": " + what;
      }
      return (action.type || "action") + ": " + what;
    });
  }

  // --- dismiss dialog -----------------------------------------------------------------------------

  function openDismiss(card, ctx, article, opener) {
    state.dismissing = { card: card, ctx: ctx, article: article, opener: opener };
    $("dismiss-summary").textContent = String(card.summary || "");
    $("dismiss-error").textContent = "";
    $("dismiss-comment").value = "";
    var box = $("dismiss-reasons");
    clear(box);
    var reasons = Array.isArray(card.overrideReasons) ? card.overrideReasons : [];
    if (!reasons.length) {
      box.appendChild(el("p", { className: "hint", text: "This card offers no reasons; it is dismissed without one." }));
    }
    reasons.forEach(function (reason, i) {
      var id = "reason-" + i;
      box.appendChild(el("div", { className: "reason" }, [
        el("input", { type: "radio", name: "override-reason", id: id, value: String(i),
          dataset: { code: reason.code || "" } }),
        el("label", { "for": id, text: String(reason.display || reason.code || "Reason") })
      ]));
    });
    var dialog = $("dismiss-dialog");
    dialog.showModal();
    var first = box.querySelector("input");
    (first || $("dismiss-comment")).focus();
  }

  function closeDismiss() {
    var d = state.dismissing;
    var dialog = $("dismiss-dialog");
    if (dialog.open) { dialog.close(); }
    state.dismissing = null;
    if (d && d.opener && !d.opener.disabled) { d.opener.focus(); }
  }

  function confirmDismiss(event) {
    event.preventDefault();
    var d = state.dismissing;
    if (!d) { return; }
    var reasons = Array.isArray(d.card.overrideReasons) ? d.card.overrideReasons : [];
    var chosen = document.querySelector("input[name=override-reason]:checked");
    if (reasons.length && !chosen) {
      $("dismiss-error").textContent = "Choose a reason.";
      return;
    }
    var reason = chosen ? reasons[Number(chosen.value)] : null;
    var comment = $("dismiss-comment").value.trim();
    var item = { card: d.card.uuid, outcome: "overridden", outcomeTimestamp: new Date().toISOString() };
    if (reason || comment) {
      item.overrideReason = {};
      if (reason) { item.overrideReason.reason = reason; }
      if (comment) { item.overrideReason.userComment = comment; }
    }
    $("dismiss-confirm").disabled = true;
    sendFeedback(d.ctx.serviceId, item).then(function (r) {
      $("dismiss-confirm").disabled = false;
      if (!r.ok) { $("dismiss-error").textContent = "Feedback not stored: " + r.error; return; }
      $("dismiss-dialog").close();
      state.dismissing = null;
      var text = "Dismissed" + (reason ? ": " + (reason.display || reason.code) : "");
      finishCard(d.article, text, "dismissed");
      var detail = d.article.querySelector("details");
      if (detail) { detail.open = false; }
      focusSummary(d.article);
    });
  }

  // --- rule trace ---------------------------------------------------------------------------------

  function renderTrace(result) {
    var box = $("trace");
    clear(box);
    if (!result) {
      box.appendChild(el("p", { className: "empty", text: "The rule trace (explain endpoint) is off: " +
        "it is on in local mode, or with CDS_EXPLAIN_ENABLED=true." }));
      return;
    }
    if (!result.ok) {
      box.appendChild(el("p", { className: "note note-error", text: "Explain failed: " + result.error }));
      return;
    }
    var data = result.data || {};
    var rules = data.rules || [];
    var fired = rules.filter(function (r) { return r.status === "fired"; }).length;
    box.appendChild(el("p", { className: "trace-summary", text: rules.length + " rules evaluated, " +
      fired + " fired" + (data.unavailable && data.unavailable.length
        ? "; data not read: " + data.unavailable.join(", ") : "") + "." }));
    var list = el("ol", { className: "trace-list", id: "trace-rules" });
    rules.forEach(function (rule) {
      var status = String(rule.status || "");
      var lines = (rule.evidence || []).map(function (e) { return "evidence: " + e; })
        .concat(rule.trace || []);
      var summary = el("summary", null, [
        el("span", { className: "rule-status status-" + status.replace(/[^a-z-]/g, ""), text: status }),
        el("code", { className: "rule-id", text: String(rule.rule || "") }),
        el("span", { className: "rule-title", text: String(rule.title || "") }),
        rule.indicator ? el("span", { className: "badge badge-small indicator-" +
          (INDICATOR_LABEL[rule.indicator] ? rule.indicator : "info"), text: rule.indicator }) : null
      ]);
      var body = el("div", { className: "rule-body" }, [
        rule.reason ? el("p", { text: "Reason: " + rule.reason }) : null,
        lines.length ? el("pre", { className: "json", text: lines.join("\n") }) : null
      ]);
      list.appendChild(el("li", { className: "trace-rule", dataset: { status: status } },
        [el("details", null, [summary, body])]));
    });
    box.appendChild(list);
    var extra = { fetches: data.fetches, skippedResources: data.skippedResources,
      unusableLabResults: data.unusableLabResults };
    box.appendChild(el("details", { className: "trace-extra" }, [el("summary", { text: "FHIR fetches and skipped data" }),
      el("pre", { className: "json", text: pretty(extra) })]));
  }

  // --- tabs -----------------------------------------------------------------------------------------

  function setupTabs() {
    var tabs = Array.prototype.slice.call(document.querySelectorAll("[role=tab]"));
    function select(tab, focus) {
      tabs.forEach(function (t) {
        var on = t === tab;
        t.setAttribute("aria-selected", on ? "true" : "false");
        t.tabIndex = on ? 0 : -1;
        $(t.getAttribute("aria-controls")).hidden = !on;
      });
      if (focus) { tab.focus(); }
    }
    tabs.forEach(function (tab, i) {
      tab.addEventListener("click", function () { select(tab, false); });
      tab.addEventListener("keydown", function (e) {
        var next = null;
        if (e.key === "ArrowRight") { next = tabs[(i + 1) % tabs.length]; }
        else if (e.key === "ArrowLeft") { next = tabs[(i - 1 + tabs.length) % tabs.length]; }
        else if (e.key === "Home") { next = tabs[0]; }
        else if (e.key === "End") { next = tabs[tabs.length - 1]; }
        if (next) { e.preventDefault(); select(next, true); }
      });
    });
  }

  function renderPasted() {
    var text = $("paste-json").value;
    var data;
    try { data = JSON.parse(text); } catch (e) {
      setStatus("Not JSON: " + e.message, "error");
      return;
    }
    var cards = data && Array.isArray(data.cards) ? data.cards : Array.isArray(data) ? data : null;
    if (!cards) { setStatus("Expected a CDS Hooks response: {\"cards\": [...]}.", "error"); return; }
    resetCards(null);
    renderCards(cards.filter(function (c) { return c && typeof c === "object"; }),
      { serviceId: null, hook: "pasted", interactive: false });
    $("cards-meta").textContent = "pasted · " + cards.length + " card" + (cards.length === 1 ? "" : "s");
    setStatus("Rendered " + cards.length + " pasted card(s).", "ok");
  }

  // --- start ------------------------------------------------------------------------------------------

  function init() {
    renderOrderPad();
    setupTabs();
    $("setup").addEventListener("submit", function (e) { e.preventDefault(); loadPatients(); });
    $("patient").addEventListener("change", function (e) { choosePatient(e.target.value); });
    Array.prototype.forEach.call(document.querySelectorAll(".btn-hook"), function (button) {
      button.addEventListener("click", function () { fireHook(button.dataset.hook); });
    });
    $("dismiss-form").addEventListener("submit", confirmDismiss);
    $("dismiss-cancel").addEventListener("click", closeDismiss);
    $("dismiss-dialog").addEventListener("cancel", function (e) { e.preventDefault(); closeDismiss(); });
    $("paste-render").addEventListener("click", renderPasted);

    Promise.all([api("GET", "/console/api/config"), api("GET", "/cds-services")]).then(function (r) {
      if (r[0].status === 401) {
        var entered = window.prompt("Outside local mode the console needs the admin token (CDS_ADMIN_TOKEN):");
        if (entered) {
          window.sessionStorage.setItem("cds-console-admin-token", entered.trim());
          window.location.reload();
          return;
        }
        setStatus("The console needs the admin token outside local mode.", "error");
      }
      if (r[0].ok) { state.config = r[0].data; }
      if (r[1].ok) {
        (r[1].data.services || []).forEach(function (s) {
          if (!state.services[s.hook]) { state.services[s.hook] = s.id; }
        });
      } else {
        setStatus("Discovery failed: " + r[1].error + (r[1].status === 401
          ? " (the console sends no JWT: use it in local mode)" : ""), "error");
      }
      var mode = $("mode");
      mode.textContent = state.config.localMode ? "Local mode" : "Authenticated mode";
      mode.hidden = false;
      var input = $("fhir-server");
      var remembered = null;
      try { remembered = window.localStorage.getItem(STORE_KEY); } catch (e) { /* private mode */ }
      if (state.config.fhirServer) {
        input.value = state.config.fhirServer;
        input.readOnly = state.config.fhirServerFixed;
      } else if (remembered && !input.value) {
        input.value = remembered;
      }
      document.body.dataset.ready = "true";
      updateButtons();
      if (input.value) { loadPatients(); }
    });
  }

  window.SleepCdsConsole = { renderMarkdown: renderMarkdown, safeUrl: safeUrl };

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
