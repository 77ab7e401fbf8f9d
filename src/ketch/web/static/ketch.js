// ketch UI actions: pause toggles, the trigger form and the run and task actions call
// the REST API with the session's CSRF token; the grid's live region follows htmx swaps. No log text or
// server message is ever inserted as HTML: textContent only.
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : null;
  }

  function callApi(method, url, body) {
    var headers = { "Content-Type": "application/json", Accept: "application/json" };
    var token = csrfToken();
    if (token) headers["X-CSRF-Token"] = token;
    return fetch(url, {
      method: method,
      headers: headers,
      credentials: "same-origin",
      body: JSON.stringify(body),
    }).then(function (response) {
      return response
        .json()
        .catch(function () { return {}; })
        .then(function (data) { return { ok: response.ok, status: response.status, data: data }; });
    });
  }

  function detailText(result) {
    var detail = result.data && result.data.detail;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail.map(function (d) { return (d.loc || []).slice(1).join(".") + ": " + d.msg; }).join("; ");
    }
    return "the server answered " + result.status;
  }

  function say(text) {
    var status = document.getElementById("action-status");
    if (status) status.textContent = text;
  }

  // --- pause / unpause ------------------------------------------------------------------
  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button.pause-toggle") : null;
    if (!button) return;
    var paused = button.dataset.paused === "true";
    var dagId = button.dataset.dagId;
    button.disabled = true;
    callApi("PATCH", button.dataset.url, { is_paused: !paused })
      .then(function (result) {
        if (!result.ok) {
          say("Could not " + (paused ? "unpause " : "pause ") + dagId + ": " + detailText(result));
          return;
        }
        var now = !!result.data.is_paused;
        button.dataset.paused = now ? "true" : "false";
        button.textContent = now ? "Unpause" : "Pause";
        button.setAttribute("aria-label", (now ? "Unpause " : "Pause ") + dagId);
        var state = button.parentNode.querySelector(".paused-state");
        if (state) state.textContent = now ? "Paused" : "Active";
        say(dagId + " is " + (now ? "paused" : "active") + ".");
      })
      .catch(function (error) { say("Could not reach the server: " + error); })
      .finally(function () { button.disabled = false; });
  });

  // --- trigger with conf from the params form --------------------------------------------
  function fieldValue(input) {
    var kind = input.dataset.kind;
    if (kind === "boolean") return { value: input.checked };
    var text = input.value;
    if (text.trim() === "") return { skip: true }; // the param's default applies
    if (kind === "integer" && /^-?\d+$/.test(text.trim())) return { value: parseInt(text, 10) };
    if (kind === "number" && text.trim() !== "" && !isNaN(Number(text))) return { value: Number(text) };
    if (kind === "json") {
      try {
        return { value: JSON.parse(text) };
      } catch (e) {
        return { error: "not valid JSON (" + e.message + ")" };
      }
    }
    return { value: text }; // strings, and numbers that are not: the API says why
  }

  function errorBox(form, name) {
    var boxes = form.querySelectorAll(".error[data-param]");
    for (var i = 0; i < boxes.length; i++) if (boxes[i].dataset.param === name) return boxes[i];
    return null;
  }

  function markInvalid(form, name, message) {
    var box = errorBox(form, name);
    if (!box) return false;
    box.textContent = message;
    var input = document.getElementById(box.id.replace(/^err-/, "param-"));
    if (input) input.setAttribute("aria-invalid", "true");
    return true;
  }

  function clearErrors(form) {
    form.querySelectorAll(".error").forEach(function (box) { box.textContent = ""; });
    form.querySelectorAll("[aria-invalid]").forEach(function (el) { el.removeAttribute("aria-invalid"); });
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.id !== "trigger-form") return;
    event.preventDefault();
    clearErrors(form);
    var conf = {};
    var firstBad = null;
    form.querySelectorAll("[data-kind]").forEach(function (input) {
      var got = fieldValue(input);
      if (got.error) {
        markInvalid(form, input.name, got.error);
        firstBad = firstBad || input;
      } else if (!got.skip) {
        conf[input.name] = got.value;
      }
    });
    if (firstBad) { firstBad.focus(); return; }
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    callApi("POST", form.dataset.url, { conf: conf })
      .then(function (result) {
        if (result.ok) {
          say("Triggered run " + result.data.dag_run_id + ".");
          document.body.dispatchEvent(new CustomEvent("ketch:refresh"));
          return;
        }
        var detail = result.data && result.data.detail;
        var shown = false;
        if (result.status === 422 && Array.isArray(detail)) {
          detail.forEach(function (d) {
            var loc = d.loc || [];
            if (loc[1] === "conf" && loc.length > 2) {
              shown = markInvalid(form, String(loc[2]), d.msg) || shown;
            }
          });
        }
        if (!shown) {
          document.getElementById("trigger-error").textContent = "Not triggered: " + detailText(result);
        } else {
          var bad = form.querySelector("[aria-invalid]");
          if (bad) bad.focus();
        }
      })
      .catch(function (error) {
        document.getElementById("trigger-error").textContent = "Could not reach the server: " + error;
      })
      .finally(function () { button.disabled = false; });
  });

  // --- run and task actions: mark, clear (with a preview of what it clears) --------------
  // <form class="api-action" data-method data-url data-body='{...}'>: the body, plus one
  // boolean per checkbox[data-field]. data-preview="true" (clear): the first press is a
  // dry run that lists the task instances; pressing again clears exactly that selection.
  function actionBody(form) {
    var body = JSON.parse(form.dataset.body || "{}");
    // [data-omit-unset]: an unticked box or an empty field is left out of the body, so
    // the API's default applies (a variable named like a secret stays sensitive).
    form.querySelectorAll("input[type=checkbox][data-field]").forEach(function (box) {
      if (box.checked || box.dataset.omitUnset !== "true") body[box.dataset.field] = box.checked;
    });
    // Text fields: [data-text-field] goes into the body unless it is [data-in-url] (then
    // it fills {name} in data-url, percent-encoded: a key may hold any character).
    form.querySelectorAll("[data-text-field]").forEach(function (input) {
      if (input.dataset.inUrl === "true") return;
      if (input.value === "" && input.dataset.omitUnset === "true") return;
      // [data-empty-null]: an emptied field is sent as null (it clears the value).
      if (input.value === "" && input.dataset.emptyNull === "true") {
        body[input.dataset.textField] = null;
        return;
      }
      body[input.dataset.textField] = input.value;
    });
    // data-numbers="slots,...": fields sent as numbers when they read as one (else as
    // typed, and the API says what is wrong with them).
    (form.dataset.numbers || "").split(",").forEach(function (name) {
      if (name && typeof body[name] === "string" && /^-?\d+$/.test(body[name].trim())) {
        body[name] = parseInt(body[name], 10);
      }
    });
    return body;
  }

  function actionUrl(form, body) {
    var url = form.dataset.url.replace(/\{([a-z_]+)\}/g, function (whole, name) {
      var input = form.querySelector('[data-text-field="' + name + '"]');
      return input ? encodeURIComponent(input.value) : whole;
    });
    // data-update-mask="true" (a PATCH): ?update_mask= names every field the form sends
    // beyond data-body's fixed ones, so a field left out (a blank password) is kept.
    if (form.dataset.updateMask === "true") {
      var fixed = JSON.parse(form.dataset.body || "{}");
      var names = Object.keys(body).filter(function (name) { return !(name in fixed); });
      url += (url.indexOf("?") < 0 ? "?" : "&") + names.map(function (name) {
        return "update_mask=" + encodeURIComponent(name);
      }).join("&");
    }
    return url;
  }

  function resetPreview(form) {
    var list = form.querySelector(".preview");
    var button = form.querySelector("button[type=submit]");
    form.dataset.previewed = "false";
    if (list) { list.hidden = true; list.textContent = ""; }
    if (button && button.dataset.label) button.textContent = button.dataset.label;
  }

  function showPreview(form, tis) {
    var list = form.querySelector(".preview");
    var button = form.querySelector("button[type=submit]");
    var result = form.querySelector(".action-result");
    list.textContent = "";
    tis.forEach(function (ti) {
      var item = document.createElement("li");
      item.textContent = ti.task_id + " (" + (ti.state || "no status") + ")";
      list.appendChild(item);
    });
    list.hidden = tis.length === 0;
    if (tis.length === 0) {
      result.textContent = "Nothing to clear with these options.";
      return;
    }
    form.dataset.previewed = "true";
    result.textContent = tis.length + " task instance" + (tis.length === 1 ? "" : "s") + " will be cleared; press again to confirm.";
    button.textContent = "Clear these " + tis.length;
  }

  document.addEventListener("change", function (event) {
    var form = event.target.closest ? event.target.closest("form.api-action") : null;
    if (form && form.dataset.preview === "true") resetPreview(form); // options changed
  });

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.classList || !form.classList.contains("api-action")) return;
    event.preventDefault();
    var result = form.querySelector(".action-result");
    var button = form.querySelector("button[type=submit]");
    var body = actionBody(form);
    var previewing = form.dataset.preview === "true" && form.dataset.previewed !== "true";
    if (form.dataset.preview === "true") body.dry_run = previewing;
    button.disabled = true;
    callApi(form.dataset.method, actionUrl(form, body), body)
      .then(function (answer) {
        if (!answer.ok) {
          result.textContent = "Not done: " + detailText(answer);
          return;
        }
        if (previewing) {
          showPreview(form, (answer.data && answer.data.task_instances) || []);
          return;
        }
        result.textContent = form.dataset.done || "Done.";
        window.setTimeout(function () { window.location.reload(); }, 800);
      })
      .catch(function (error) { result.textContent = "Could not reach the server: " + error; })
      .finally(function () { button.disabled = false; });
  });

  // --- the grid's live region: one sentence per change --------------------------------
  var gridFailed = false;
  document.addEventListener("htmx:afterSwap", function () {
    var grid = document.getElementById("grid");
    var status = document.getElementById("grid-status");
    gridFailed = false;
    if (grid && status && status.textContent !== grid.dataset.summary) {
      status.textContent = grid.dataset.summary;
    }
  });
  // A poll that fails (server down, or the session ended and the answer is a redirect to
  // sign in elsewhere) says so once, instead of leaving a stale grid looking current.
  function gridError() {
    var status = document.getElementById("grid-status");
    if (status && !gridFailed) {
      gridFailed = true;
      status.textContent = "The grid could not be refreshed (signed out, or the server is unreachable); reload the page.";
    }
  }
  document.addEventListener("htmx:sendError", gridError);
  document.addEventListener("htmx:responseError", gridError);
})();
