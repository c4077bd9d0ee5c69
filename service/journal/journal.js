/* The sleep-journal SMART app: entry form rendered from the Questionnaire, review of the nights,
 * labs and the service's current advice. Every value from the FHIR server or the service is put
 * on the page as text (textContent / SVG text nodes), never as markup.
 * The access token is only ever held by fhirclient (sessionStorage); it is not sent to the
 * journal service: the advice call carries the data the page read, not the token. */
(function () {
  "use strict";

  var SVG = "http://www.w3.org/2000/svg";
  var EXT = "http://hl7.org/fhir/StructureDefinition/";
  var app = { cfg: null, client: null, patientId: null, busy: false };

  // --- small helpers --------------------------------------------------------------------------

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      var value = attrs[key];
      if (value === null || value === undefined || value === false) { return; }
      if (key === "text") { node.textContent = String(value); } else { node.setAttribute(key, value === true ? "" : String(value)); }
    });
    (children || []).forEach(function (child) { if (child) { node.appendChild(child); } });
    return node;
  }

  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (key) { node.setAttribute(key, String(attrs[key])); });
    if (text !== undefined) { node.textContent = String(text); }
    return node;
  }

  function say(text, kind) {
    var status = $("status");
    status.textContent = text;
    status.className = kind || "";
  }

  function isoDay(date) {
    var m = String(date.getMonth() + 1).padStart(2, "0");
    var d = String(date.getDate()).padStart(2, "0");
    return date.getFullYear() + "-" + m + "-" + d;
  }

  function yesterday() {
    var d = new Date();
    d.setDate(d.getDate() - 1);
    return isoDay(d);
  }

  function addDays(day, n) {
    var d = new Date(day + "T12:00:00");
    d.setDate(d.getDate() + n);
    return isoDay(d);
  }

  function ext(item, name) {
    var found = (item.extension || []).filter(function (e) { return e.url === EXT + name; })[0];
    if (!found) { return undefined; }
    if (found.valueCoding) { return found.valueCoding; }
    return found.valueInteger !== undefined ? found.valueInteger : found.valueDecimal;
  }

  /** What went wrong, in plain words (no stack traces, no tokens, no URLs with codes). */
  function plain(err) {
    var status = err && (err.status || (err.response && err.response.status));
    var text = (err && err.message) || String(err);
    if (/access_denied/i.test(text)) {
      return "Access was not granted: the request was declined at the health record, so nothing was read or saved. Open the journal again from the health record to retry.";
    }
    if (status === 401 || /expired/i.test(text)) {
      return "Your access to the health record has expired or was withdrawn. Open the journal again from the health record (nothing was saved just now).";
    }
    if (status === 403) {
      return "The health record did not allow this (no permission). Nothing was saved.";
    }
    if (/No 'state'|No state found/.test(text)) {
      return "Open the journal from the health record (EHR), or sign in on the start page.";
    }
    if (/Failed to fetch|NetworkError/i.test(text)) {
      return "The health record could not be reached. Check the connection and try again.";
    }
    if (status) {
      return "The health record refused the request (HTTP " + status + "): " + text.split("\n")[0].slice(0, 200);
    }
    return text.split("\n")[0].slice(0, 300);
  }

  function getJson(url, options) {
    return fetch(url, Object.assign({ credentials: "same-origin" }, options || {})).then(function (r) {
      return r.json().then(function (body) {
        if (!r.ok) {
          var issue = body && body.issue && body.issue[0];
          throw new Error((issue && issue.diagnostics) || "The journal service answered " + r.status);
        }
        return body;
      });
    });
  }

  // --- the form, rendered from the Questionnaire ---------------------------------------------

  var CONTROL = {
    date: function (item) {
      return el("input", { type: "date", id: "q-" + item.linkId, name: item.linkId, value: item.linkId === "night-date" ? yesterday() : null, max: isoDay(new Date()), required: !!item.required });
    },
    time: function (item) {
      return el("input", { type: "time", id: "q-" + item.linkId, name: item.linkId, step: 60, required: !!item.required });
    },
    integer: function (item) { return numberControl(item, 1, "numeric"); },
    decimal: function (item) { return numberControl(item, 0.5, "decimal"); },
    string: function (item) {
      return el("textarea", { id: "q-" + item.linkId, name: item.linkId, rows: 2, maxlength: 500, required: !!item.required });
    },
    boolean: function (item) {
      return choiceGroup(item, [{ value: "true", label: "Yes" }, { value: "false", label: "No" }]);
    },
    choice: function (item) {
      return choiceGroup(item, (item.answerOption || []).map(function (option, i) {
        var coding = option.valueCoding || {};
        return { value: String(i), label: coding.display || coding.code || String(i) };
      }));
    }
  };

  function numberControl(item, step, mode) {
    var input = el("input", {
      type: "number", id: "q-" + item.linkId, name: item.linkId, step: step, inputmode: mode,
      min: ext(item, "minValue"), max: ext(item, "maxValue"), required: !!item.required
    });
    function bump(delta) {
      return function () {
        var value = input.value === "" ? 0 : Number(input.value) + delta;
        var min = ext(item, "minValue"), max = ext(item, "maxValue");
        if (min !== undefined) { value = Math.max(min, value); }
        if (max !== undefined) { value = Math.min(max, value); }
        input.value = String(Math.round(value * 10) / 10);
      };
    }
    var minus = el("button", { type: "button", class: "step", "aria-label": "less", text: "−" });
    var plus = el("button", { type: "button", class: "step", "aria-label": "more", text: "+" });
    minus.addEventListener("click", bump(-step));
    plus.addEventListener("click", bump(step));
    var unit = ext(item, "questionnaire-unit");
    return el("div", { class: "number" }, [minus, input, plus, unit ? el("span", { class: "unit", text: unit.display || unit.code }) : null]);
  }

  function choiceGroup(item, options) {
    return el("div", { class: "choices", role: "radiogroup", id: "q-" + item.linkId }, options.map(function (option) {
      var id = "q-" + item.linkId + "-" + option.value;
      return el("label", { class: "choice", for: id }, [
        el("input", { type: "radio", id: id, name: item.linkId, value: option.value, required: !!item.required }),
        el("span", { text: option.label })
      ]);
    }));
  }

  function renderForm(questionnaire) {
    var form = $("night");
    form.textContent = "";
    (questionnaire.item || []).forEach(function (item) {
      var make = CONTROL[item.type];
      if (!make) { return; }  // a type this form does not know is left out, never guessed
      var wrap = el("fieldset", { class: "field field-" + item.type, "data-link-id": item.linkId, "data-type": item.type });
      wrap.appendChild(el("legend", { text: item.text + (item.required ? " (required)" : "") }));
      wrap.appendChild(make(item));
      wrap.appendChild(el("p", { class: "field-error", id: "err-" + item.linkId, hidden: true }));
      form.appendChild(wrap);
    });
    var save = el("button", { type: "submit", id: "save", class: "primary", text: "Save this night" });
    form.appendChild(save);
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      saveNight();
    });
  }

  /** The answers on the form, checked against the Questionnaire (required, min, max). */
  function readForm(questionnaire) {
    var form = $("night");
    var answers = [];
    var problems = [];
    (questionnaire.item || []).forEach(function (item) {
      if (!CONTROL[item.type]) { return; }
      var error = $("err-" + item.linkId);
      error.hidden = true;
      var value = null;
      var raw;
      if (item.type === "boolean" || item.type === "choice") {
        var picked = form.querySelector("input[name='" + item.linkId + "']:checked");
        raw = picked ? picked.value : "";
        if (raw !== "") {
          value = item.type === "boolean" ? { valueBoolean: raw === "true" } : { valueCoding: item.answerOption[Number(raw)].valueCoding };
        }
      } else {
        raw = form.elements[item.linkId].value.trim();
        if (raw !== "") {
          if (item.type === "integer" || item.type === "decimal") {
            var number = Number(raw);
            var min = ext(item, "minValue"), max = ext(item, "maxValue");
            if (!isFinite(number) || (item.type === "integer" && Math.floor(number) !== number)) {
              problems.push([item, "Enter a whole number."]);
            } else if ((min !== undefined && number < min) || (max !== undefined && number > max)) {
              problems.push([item, "Enter a number from " + (min !== undefined ? min : "…") + " to " + (max !== undefined ? max : "…") + "."]);
            } else {
              value = item.type === "integer" ? { valueInteger: number } : { valueDecimal: number };
            }
          } else if (item.type === "date") {
            if (/^\d{4}-\d{2}-\d{2}$/.test(raw)) { value = { valueDate: raw }; } else { problems.push([item, "Enter a date."]); }
          } else if (item.type === "time") {
            if (/^\d{2}:\d{2}(:\d{2})?$/.test(raw)) { value = { valueTime: raw.length === 5 ? raw + ":00" : raw }; } else { problems.push([item, "Enter a time."]); }
          } else {
            value = { valueString: raw };
          }
        }
      }
      if (value === null && raw === "" && item.required) { problems.push([item, "This is required."]); }
      if (value !== null) { answers.push({ linkId: item.linkId, text: item.text, answer: [value] }); }
    });
    problems.forEach(function (p) {
      var error = $("err-" + p[0].linkId);
      error.textContent = p[1];
      error.hidden = false;
    });
    return { answers: answers, problems: problems };
  }

  /** A QuestionnaireResponse for one night: completed, about this patient, authored now. */
  function buildResponse(patientId) {
    var q = app.cfg.questionnaire;
    var read = readForm(q);
    if (read.problems.length) { return { problems: read.problems.map(function (p) { return p[0].linkId + ": " + p[1]; }) }; }
    return {
      resource: {
        resourceType: "QuestionnaireResponse",
        questionnaire: q.url,
        status: "completed",
        subject: { reference: "Patient/" + patientId },
        source: { reference: "Patient/" + patientId },  // the patient reports, whoever types
        authored: new Date().toISOString(),
        item: read.answers
      }
    };
  }

  function saveNight() {
    if (!app.client || app.busy) { return; }
    var built = buildResponse(app.patientId);
    if (built.problems) {
      say("Please check the highlighted answers.", "error");
      var first = document.querySelector(".field-error:not([hidden])");
      if (first) { first.parentNode.scrollIntoView({ block: "center" }); }
      return;
    }
    app.busy = true;
    $("save").disabled = true;
    say("Saving…", "busy");
    var night = built.resource.item[0] && built.resource.item[0].answer[0].valueDate;
    app.client.create(built.resource).then(function (saved) {
      say("Saved: the night of " + (night || "?") + ".", "ok");
      document.body.setAttribute("data-saved", (saved && saved.id) || "yes");
      $("night").reset();
      $("q-night-date").value = yesterday();
      return loadReview();
    }).catch(function (err) {
      say(plain(err), "error");
    }).then(function () {
      app.busy = false;
      $("save").disabled = false;
    });
  }

  // --- reading the record -----------------------------------------------------------------

  function bundleOf(result) {
    var pages = Array.isArray(result) ? result : [result];
    var entries = [];
    pages.forEach(function (page) {
      if (page && page.resourceType === "Bundle") { entries = entries.concat(page.entry || []); } else if (page && page.resourceType) { entries.push({ resource: page }); }
    });
    return { resourceType: "Bundle", type: "searchset", entry: entries };
  }

  /** Percent-encode every query value (canonical URLs and system|code lists hold "//", which
   *  some proxies collapse when sent raw). */
  function encodeQuery(query) {
    var cut = query.indexOf("?");
    var path = (cut < 0 ? query : query.slice(0, cut)).split("/").map(encodeURIComponent).join("/");
    if (cut < 0) { return path; }
    return path + "?" + query.slice(cut + 1).split("&").map(function (pair) {
      var eq = pair.indexOf("=");
      return eq < 0 ? encodeURIComponent(pair) : encodeURIComponent(pair.slice(0, eq)) + "=" + encodeURIComponent(pair.slice(eq + 1));
    }).join("&");
  }

  /** Run the patient-view prefetch queries with the app's token (the same ones the EHR's CDS
   *  call would prefetch); a query refused by the server stays out, so the advice says so. */
  function readRecord() {
    var templates = app.cfg.prefetch;
    var keys = Object.keys(templates);
    var expired = null;
    return Promise.all(keys.map(function (key) {
      var query = encodeQuery(templates[key].split("{{context.patientId}}").join(app.patientId));
      var single = query.indexOf("?") < 0;
      return app.client.request(query, single ? {} : { pageLimit: 10 }).then(function (result) {
        return [key, single ? result : bundleOf(result)];
      }, function (err) {
        if ((err && err.status) === 401) { expired = err; }
        return [key, undefined];
      });
    })).then(function (pairs) {
      if (expired) { throw expired; }
      var prefetch = {};
      pairs.forEach(function (pair) { if (pair[1] !== undefined) { prefetch[pair[0]] = pair[1]; } });
      return prefetch;
    });
  }

  function resources(bundle, type) {
    return ((bundle && bundle.entry) || []).map(function (e) { return e.resource; }).filter(function (r) { return r && r.resourceType === type; });
  }

  function answersOf(response) {
    var out = {};
    (function walk(items) {
      (items || []).forEach(function (item) {
        var answer = (item.answer || [])[0];
        if (answer) {
          var key = Object.keys(answer).filter(function (k) { return k.indexOf("value") === 0; })[0];
          var value = key ? answer[key] : undefined;
          if (key === "valueCoding") { value = value.code; }
          if (value !== undefined) { out[item.linkId] = value; }
        }
        walk(item.item);
      });
    })(response.item);
    return out;
  }

  /** One row per night (the last submission for a night wins, as the rules count it). */
  function nightsOf(journal) {
    var url = app.cfg.questionnaire.url;
    var byNight = {};
    resources(journal, "QuestionnaireResponse").filter(function (r) {
      return String(r.questionnaire || "").split("|")[0] === url && (r.status === "completed" || r.status === "amended");
    }).forEach(function (r) {
      var a = answersOf(r);
      var night = String(a["night-date"] || r.authored || "").slice(0, 10);
      if (!/^\d{4}-\d{2}-\d{2}$/.test(night)) { return; }
      var prior = byNight[night];
      if (!prior || String(r.authored || "") >= prior.authored) { byNight[night] = { night: night, authored: String(r.authored || ""), a: a }; }
    });
    return Object.keys(byNight).sort().map(function (k) { return byNight[k]; });
  }

  // --- review: chart, weeks, labs, advice -------------------------------------------------------

  var ROWS = [
    { id: "urge-to-move", label: "Leg urge (RLS)", kind: "bool" },
    { id: "cramp-pain", label: "Leg cramp", kind: "bool" },
    { id: "caffeine-after-14", label: "Caffeine after 2 pm", kind: "bool" },
    { id: "late-exercise", label: "Late exercise", kind: "bool" },
    { id: "stress-level", label: "Stress (0-10)", kind: "scale", max: 10 },
    { id: "alcohol-drinks", label: "Alcohol (drinks)", kind: "count" },
    { id: "nicotine-evening", label: "Nicotine", kind: "bool" },
    { id: "screens-in-bed", label: "Screens in bed", kind: "bool" }
  ];

  function renderChart(nights) {
    var box = $("chart");
    box.textContent = "";
    if (!nights.length) {
      box.appendChild(el("p", { class: "empty", text: "No nights recorded yet. Save the first night on the left (or under New night)." }));
      return;
    }
    var last = nights[nights.length - 1].night;
    // Two weeks at least (the week-over-week comparison), four at most.
    var first = nights[0].night > addDays(last, -27) ? nights[0].night : addDays(last, -27);
    if (first > addDays(last, -13)) { first = addDays(last, -13); }
    var days = [];
    for (var day = first; day <= last; day = addDays(day, 1)) { days.push(day); }
    var byDay = {};
    nights.forEach(function (n) { byDay[n.night] = n; });
    var left = 132, col = 22, barH = 90, sleepH = 70, rowH = 18, top = 14;
    var width = left + days.length * col + 8;
    var rowsTop = top + barH + 24 + sleepH + 22;
    var height = rowsTop + ROWS.length * rowH + 26;
    var chart = svg("svg", { viewBox: "0 0 " + width + " " + height, width: width, class: "chart", role: "img", "aria-label": "Sleep journal, " + nights.length + " nights from " + first + " to " + last });
    var maxJerks = 5;
    nights.forEach(function (n) { maxJerks = Math.max(maxJerks, Number(n.a["jerk-count"]) || 0); });
    chart.appendChild(svg("text", { x: 4, y: top + 10, class: "axis-label" }, "Jerks per night"));
    chart.appendChild(svg("text", { x: 4, y: top + 24, class: "axis-note" }, "max " + maxJerks));
    chart.appendChild(svg("line", { x1: left, x2: width - 8, y1: top + barH, y2: top + barH, class: "axis" }));
    var sleepTop = top + barH + 24;
    chart.appendChild(svg("text", { x: 4, y: sleepTop + 10, class: "axis-label" }, "Sleep (hours)"));
    chart.appendChild(svg("text", { x: 4, y: sleepTop + 24, class: "axis-note" }, "0 to 12"));
    chart.appendChild(svg("line", { x1: left, x2: width - 8, y1: sleepTop + sleepH, y2: sleepTop + sleepH, class: "axis" }));
    var points = [];
    days.forEach(function (d, i) {
      var x = left + i * col;
      var n = byDay[d];
      if (!n) { return; }
      var jerks = Number(n.a["jerk-count"]);
      if (isFinite(jerks) && n.a["jerk-count"] !== undefined) {
        var h = Math.max(1, (jerks / maxJerks) * (barH - 4));
        var bar = svg("rect", { x: x + 3, y: top + barH - h, width: col - 6, height: h, class: "bar" });
        bar.appendChild(svg("title", {}, d + ": " + jerks + " jerks"));
        chart.appendChild(bar);
      }
      var hours = Number(n.a["total-sleep-h"]);
      if (n.a["total-sleep-h"] !== undefined && isFinite(hours)) {
        var y = sleepTop + sleepH - (Math.min(hours, 12) / 12) * sleepH;
        points.push((x + col / 2) + "," + y);
        var dot = svg("circle", { cx: x + col / 2, cy: y, r: 3.5, class: "sleep-dot" });
        dot.appendChild(svg("title", {}, d + ": " + hours + " h sleep"));
        chart.appendChild(dot);
      }
    });
    if (points.length > 1) { chart.insertBefore(svg("polyline", { points: points.join(" "), class: "sleep-line" }), chart.firstChild); }
    ROWS.forEach(function (row, r) {
      var y = rowsTop + r * rowH;
      chart.appendChild(svg("text", { x: 4, y: y + 12, class: "row-label" }, row.label));
      days.forEach(function (d, i) {
        var n = byDay[d];
        if (!n || n.a[row.id] === undefined) { return; }
        var v = n.a[row.id];
        var cx = left + i * col + col / 2, cy = y + 8, mark;
        if (row.kind === "bool") {
          mark = svg("circle", { cx: cx, cy: cy, r: v === true ? 6 : 2.5, class: v === true ? "yes" : "no" });
        } else {
          var number = Number(v) || 0;
          var g = svg("g", {});
          g.appendChild(svg("rect", { x: cx - 9, y: cy - 7, width: 18, height: 14, rx: 3, class: "scale", "fill-opacity": row.max ? Math.max(0.08, number / row.max) : (number ? 0.7 : 0.08) }));
          g.appendChild(svg("text", { x: cx, y: cy + 4, class: "cell-text" }, number));
          mark = g;
        }
        mark.appendChild(svg("title", {}, d + " " + row.label + ": " + (v === true ? "yes" : v === false ? "no" : v)));
        chart.appendChild(mark);
      });
    });
    days.forEach(function (d, i) {
      if (i % 7 === 0 || i === days.length - 1) {
        chart.appendChild(svg("text", { x: left + i * col + col / 2, y: height - 8, class: "day-label" }, d.slice(5)));
      }
    });
    box.appendChild(el("div", { class: "chart-scroll" }, [chart]));
    box.appendChild(nightsTable(nights));
  }

  /** The same nights as a table (screen readers, exact values), newest first. */
  function nightsTable(nights) {
    var columns = [["jerk-count", "Jerks"], ["total-sleep-h", "Sleep h"]].concat(ROWS.map(function (r) { return [r.id, r.label]; }));
    function shown(v) { return v === true ? "yes" : v === false ? "no" : v === undefined ? "" : String(v); }
    var head = el("tr", {}, [el("th", { scope: "col", text: "Night" })].concat(columns.map(function (c) { return el("th", { scope: "col", text: c[1] }); })));
    var rows = nights.slice().reverse().map(function (n) {
      return el("tr", {}, [el("th", { scope: "row", text: n.night })].concat(columns.map(function (c) { return el("td", { text: shown(n.a[c[0]]) }); })));
    });
    return el("details", { class: "nights" }, [
      el("summary", { text: "Nights as a table" }),
      el("div", { class: "chart-scroll" }, [el("table", {}, [el("thead", {}, [head]), el("tbody", {}, rows)])])
    ]);
  }

  function weekStats(nights, from, to) {
    var rows = nights.filter(function (n) { return n.night >= from && n.night <= to; });
    function mean(id) {
      var values = rows.map(function (n) { return Number(n.a[id]); }).filter(function (v, i) { return rows[i].a[id] !== undefined && isFinite(v); });
      return values.length ? Math.round((values.reduce(function (s, v) { return s + v; }, 0) / values.length) * 10) / 10 : null;
    }
    function count(id) { return rows.filter(function (n) { return n.a[id] === true; }).length; }
    function sum(id) { return rows.reduce(function (s, n) { return s + (Number(n.a[id]) || 0); }, 0); }
    return [
      ["Nights recorded", rows.length],
      ["Jerks per night (mean)", mean("jerk-count")],
      ["Sleep hours (mean)", mean("total-sleep-h")],
      ["Nights with leg urge", count("urge-to-move")],
      ["Nights with cramps", count("cramp-pain")],
      ["Caffeine after 2 pm (nights)", count("caffeine-after-14")],
      ["Late exercise (nights)", count("late-exercise")],
      ["Stress (mean, 0-10)", mean("stress-level")],
      ["Alcoholic drinks (total)", sum("alcohol-drinks")],
      ["Nicotine (nights)", count("nicotine-evening")],
      ["Screens in bed (nights)", count("screens-in-bed")]
    ];
  }

  function renderWeeks(nights) {
    var box = $("weeks");
    box.textContent = "";
    if (!nights.length) { return; }
    var last = nights[nights.length - 1].night;
    var now = weekStats(nights, addDays(last, -6), last);
    var before = weekStats(nights, addDays(last, -13), addDays(last, -7));
    var table = el("table", { class: "weeks" }, [
      el("caption", { text: "Last 7 days to " + last + " against the 7 days before" }),
      el("thead", {}, [el("tr", {}, [el("th", { text: "" }), el("th", { scope: "col", text: "This week" }), el("th", { scope: "col", text: "Week before" }), el("th", { scope: "col", text: "Change" })])])
    ]);
    var body = el("tbody");
    now.forEach(function (row, i) {
      var a = row[1], b = before[i][1];
      var change = a === null || b === null || before[0][1] === 0 ? "–" : (a - b > 0 ? "+" : "") + Math.round((a - b) * 10) / 10;
      body.appendChild(el("tr", {}, [el("th", { scope: "row", text: row[0] }), el("td", { text: a === null ? "–" : a }), el("td", { text: b === null ? "–" : b }), el("td", { text: change })]));
    });
    table.appendChild(body);
    box.appendChild(table);
  }

  function renderLabs(observations) {
    var box = $("labs");
    box.textContent = "";
    var names = app.cfg.labNames;
    var rows = resources(observations, "Observation").map(function (o) {
      var name = null;
      ((o.code && o.code.coding) || []).forEach(function (c) { name = name || names[c.system + "|" + c.code]; });
      var q = o.valueQuantity || {};
      var value = q.value !== undefined ? (q.comparator || "") + q.value + " " + (q.unit || q.code || "") : (o.valueString || "");
      return { name: name || (o.code && o.code.text) || "Lab", value: value.trim(), date: String(o.effectiveDateTime || o.issued || "").slice(0, 10) };
    }).sort(function (a, b) { return a.name === b.name ? (a.date < b.date ? 1 : -1) : (a.name < b.name ? -1 : 1); });
    if (!rows.length) {
      box.appendChild(el("p", { class: "empty", text: observations ? "No results on record for the labs the advice reads." : "Labs could not be read from the health record." }));
      return;
    }
    var body = el("tbody", {}, rows.map(function (r) { return el("tr", {}, [el("th", { scope: "row", text: r.name }), el("td", { text: r.value }), el("td", { text: r.date })]); }));
    box.appendChild(el("table", { class: "labs" }, [el("thead", {}, [el("tr", {}, [el("th", { scope: "col", text: "Lab" }), el("th", { scope: "col", text: "Result" }), el("th", { scope: "col", text: "Date" })])]), body]));
  }

  var DATA_NAMES = {
    patient: "the patient's age", conditions: "problems", observations: "labs",
    symptoms: "recorded findings", medicationRequests: "medication orders",
    medicationStatements: "medication lists", journal: "the sleep journal"
  };

  /** Card detail is markdown; shown as text with the emphasis marks and link targets dropped. */
  function plainMarkdown(text) {
    return text.replace(/\*\*([^*]+)\*\*/g, "$1").replace(/\[([^\]]+)\]\([^)]*\)/g, "$1");
  }

  function renderAdvice(answer) {
    var box = $("advice");
    box.textContent = "";
    if (answer.unavailable && answer.unavailable.length) {
      var names = answer.unavailable.map(function (key) { return DATA_NAMES[key] || key; });
      box.appendChild(el("p", { class: "note", text: "Not readable with this app's access, so the advice does not use: " + names.join(", ") + "." }));
    }
    if (!answer.cards.length) {
      box.appendChild(el("p", { class: "empty", text: "No advice for this patient from the current record and journal." }));
      return;
    }
    answer.cards.forEach(function (card) {
      box.appendChild(el("article", { class: "card card-" + card.indicator, "data-indicator": card.indicator }, [
        el("h4", { text: card.summary }),
        el("p", { class: "card-detail", text: plainMarkdown(card.detail || "") }),
        card.source && card.source.label ? el("p", { class: "card-source", text: "Source: " + card.source.label }) : null
      ]));
    });
  }

  function loadReview() {
    return readRecord().then(function (prefetch) {
      var nights = nightsOf(prefetch.journal);
      document.body.setAttribute("data-nights", String(nights.length));
      renderChart(nights);
      renderWeeks(nights);
      renderLabs(prefetch.observations);
      $("advice").textContent = "";
      $("advice").appendChild(el("p", { class: "empty", text: "Asking the service…" }));
      return getJson("api/advice", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ patientId: app.patientId, fhirServer: app.client.state.serverUrl, prefetch: prefetch })
      }).then(renderAdvice, function (err) {
        $("advice").textContent = "";
        $("advice").appendChild(el("p", { class: "error", text: "The service's advice could not be shown: " + plain(err) }));
      }).then(function () { document.body.setAttribute("data-advice", "shown"); });
    });
  }

  // --- start-up ---------------------------------------------------------------------------

  function showTab(name) {
    ["entry", "review"].forEach(function (tab) {
      $(tab).classList.toggle("active", tab === name);
      $("tab-" + tab).setAttribute("aria-selected", String(tab === name));
    });
  }

  function patientName(p) {
    var name = (p.name || [])[0] || {};
    return name.text || [].concat(name.given || [], name.family ? [name.family] : []).join(" ") || ("Patient " + p.id);
  }

  // For tests and integrators' consoles: what would be saved, and how an error is worded.
  window.SleepJournal = { buildResponse: buildResponse, plainError: plain };
  $("tab-entry").addEventListener("click", function () { showTab("entry"); });
  $("tab-review").addEventListener("click", function () { showTab("review"); });
  showTab(window.location.hash === "#review" ? "review" : "entry");

  getJson("api/config").then(function (cfg) {
    app.cfg = cfg;
    renderForm(cfg.questionnaire);
    document.body.setAttribute("data-form", "ready");
    return FHIR.oauth2.ready();
  }).then(function (client) {
    app.client = client;
    app.patientId = client.patient.id;
    if (!app.patientId) { throw new Error("The health record did not say which patient this is. Open the journal from the patient's chart."); }
    say("Connected.", "ok");
    return client.patient.read().then(function (patient) {
      $("patient").textContent = patientName(patient) + (patient.birthDate ? " · born " + patient.birthDate : "");
      document.body.setAttribute("data-state", "ready");
      return loadReview();
    });
  }).then(function () {
    if (document.body.getAttribute("data-state") === "ready") { say("Ready.", "ok"); }
  }).catch(function (err) {
    document.body.setAttribute("data-state", "error");
    var save = $("save");
    if (save && !app.client) { save.disabled = true; }
    say(plain(err), "error");
  });
})();
