/* SMART App Launch 2.0 (EHR and standalone) with the vendored fhirclient library.
 * The service decides which FHIR servers are allowed (api/check) before any redirect. */
(function () {
  "use strict";
  var status = document.getElementById("status");
  var form = document.getElementById("standalone");

  function say(text, isError) {
    status.textContent = text;
    status.className = isError ? "error" : "";
    document.body.setAttribute("data-state", isError ? "error" : "busy");
  }

  function outcomeText(body, fallback) {
    var issue = body && body.issue && body.issue[0];
    return (issue && issue.diagnostics) || fallback;
  }

  function getJson(url) {
    return fetch(url, { credentials: "same-origin" }).then(function (r) {
      return r.json().then(function (body) {
        if (!r.ok) { throw new Error(outcomeText(body, "The journal service answered " + r.status)); }
        return body;
      });
    });
  }

  function start(cfg, iss, launch) {
    say("Checking the health record address…");
    return getJson("api/check?iss=" + encodeURIComponent(iss)).then(function () {
      say("Connecting to the health record…");
      return FHIR.oauth2.authorize({
        clientId: cfg.clientId,
        scope: launch ? cfg.scopes.ehr : cfg.scopes.standalone,
        redirectUri: "./",
        iss: iss,
        launch: launch || undefined,
        pkceMode: "required",
        completeInTarget: true
      });
    });
  }

  function failed(err) {
    var text = (err && err.message) || String(err);
    if (/S256|PKCE|code_challenge/i.test(text)) {
      text = "This health record does not support secure sign-in (PKCE S256), so the journal cannot connect.";
    } else if (/Failed to fetch|NetworkError/i.test(text)) {
      text = "The health record could not be reached. Check the address and try again.";
    }
    say(text, true);
  }

  var params = new URLSearchParams(window.location.search);
  getJson("api/config").then(function (cfg) {
    var iss = params.get("iss");
    if (iss) { return start(cfg, iss, params.get("launch")); }
    say("Standalone launch: enter your health record's address.");
    document.body.setAttribute("data-state", "ready");
    var servers = cfg.fhirServers || [];
    if (servers.length === 1) { form.iss.value = servers[0]; }
    form.hidden = false;
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      start(cfg, form.iss.value.trim(), null).catch(failed);
    });
  }).catch(failed);
})();
