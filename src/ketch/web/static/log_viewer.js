// The log viewer of a try page: follows the REST log API's event stream
// (?follow=true&offset=N), appends each line as text (textContent, never HTML), keeps
// the view at the bottom unless the reader scrolled up, and resumes from the bytes it
// already has when the connection drops. A finished try's stream ends at once.
// Each line has a number that links to it (#L12: the page opens there), and the search
// box marks the lines holding its text (case-insensitive), Previous/Next (or Enter,
// Shift+Enter) moving between them.
(function () {
  "use strict";

  var view = document.getElementById("log");
  var status = document.getElementById("log-status");
  if (!view || !window.EventSource) {
    if (status) status.textContent = "This browser cannot follow the log; use the download link.";
    return;
  }
  var url = view.dataset.url;
  var join = url.indexOf("?") >= 0 ? "&" : "?"; // a mapped instance's URL has ?map_index=
  var encoder = new TextEncoder();
  var offset = 0; // bytes received so far (the API's offsets are in bytes)
  var pending = ""; // the last line, until its newline arrives
  var partial = null; // the element showing `pending`
  var stick = true; // follow the end unless the reader scrolled up
  var ended = false;
  var failures = 0;
  var lineCount = 0;
  var source = null;

  view.addEventListener("scroll", function () {
    stick = view.scrollTop + view.clientHeight >= view.scrollHeight - 8;
  });

  var lines = []; // every complete line's element, in order
  var query = ""; // the search, lowercased ("" when none)
  var matches = []; // elements of the lines that hold it
  var current = -1; // the match shown last
  var wanted = /^#L(\d+)$/.exec(window.location.hash); // a line link opened the page
  var wantedLine = wanted ? parseInt(wanted[1], 10) : 0;

  function lineElement(text) {
    lineCount += 1;
    var line = document.createElement("div");
    line.className = "line";
    line.id = "L" + lineCount;
    var number = document.createElement("a");
    number.className = "ln";
    number.href = "#L" + lineCount;
    number.tabIndex = -1; // thousands of lines: not one tab stop each
    number.textContent = String(lineCount);
    var body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    line.appendChild(number);
    line.appendChild(body);
    lines.push(line);
    if (query && text.toLowerCase().indexOf(query) >= 0) {
      line.classList.add("match");
      matches.push(line);
    }
    if (lineCount === wantedLine) {
      line.classList.add("linked");
      stick = false;
      window.setTimeout(function () { line.scrollIntoView({ block: "center" }); }, 0);
    }
    return line;
  }

  // --- search ------------------------------------------------------------------------
  var searchBox = document.getElementById("log-search");
  var counter = document.getElementById("log-matches");

  function say() {
    if (!counter) return;
    if (!query) { counter.textContent = ""; return; }
    counter.textContent = matches.length === 0 ? "No line holds it."
      : (current >= 0 ? (current + 1) + " of " : "") + matches.length + " line" + (matches.length === 1 ? "" : "s");
  }

  function search(text) {
    query = text.toLowerCase();
    matches.forEach(function (line) { line.classList.remove("match", "current"); });
    matches = [];
    current = -1;
    if (query) {
      lines.forEach(function (line) {
        if (line.lastChild.textContent.toLowerCase().indexOf(query) >= 0) {
          line.classList.add("match");
          matches.push(line);
        }
      });
    }
    say();
  }

  function step(by) {
    if (!matches.length) return;
    if (current >= 0) matches[current].classList.remove("current");
    current = (current + by + matches.length) % matches.length;
    var line = matches[current];
    line.classList.add("current");
    stick = false;
    line.scrollIntoView({ block: "center" });
    say();
  }

  if (searchBox) {
    var timer = null;
    searchBox.addEventListener("input", function () {
      window.clearTimeout(timer);
      timer = window.setTimeout(function () { search(searchBox.value); }, 150);
    });
    searchBox.addEventListener("keydown", function (event) {
      if (event.key !== "Enter") return;
      event.preventDefault();
      window.clearTimeout(timer);
      if (searchBox.value.toLowerCase() !== query) search(searchBox.value);
      step(event.shiftKey ? -1 : 1);
    });
    document.getElementById("log-next").addEventListener("click", function () { step(1); });
    document.getElementById("log-prev").addEventListener("click", function () { step(-1); });
  }

  function append(text) {
    offset += encoder.encode(text).length;
    pending += text;
    var parts = pending.split("\n");
    pending = parts.pop();
    var fragment = document.createDocumentFragment();
    parts.forEach(function (part) { fragment.appendChild(lineElement(part)); });
    if (partial) { partial.remove(); partial = null; }
    view.appendChild(fragment);
    if (pending) {
      partial = document.createElement("div");
      partial.className = "line partial";
      partial.textContent = pending;
      view.appendChild(partial);
    }
    if (stick) view.scrollTop = view.scrollHeight;
  }

  // The task instance's state at the top of the page, once the followed try has ended.
  var STATES = ["success", "failed", "running", "queued", "scheduled", "up_for_retry",
                "up_for_reschedule", "skipped", "upstream_failed", "removed"];
  function showState(state) {
    var text = document.getElementById("ti-state");
    var square = document.getElementById("ti-square");
    if (text) text.textContent = state;
    if (square) square.className = "sq state-" + (STATES.indexOf(state) >= 0 ? state : "none");
  }

  var waiting = false;

  function connect() {
    source = new EventSource(url + join + "follow=true&offset=" + offset);
    source.addEventListener("open", function () {
      failures = 0;
      status.textContent = "Following the log…";
    });
    source.addEventListener("log", function (event) {
      if (waiting) {
        waiting = false;
        status.textContent = "Following the log…";
      }
      append(event.data);
    });
    // Why the try's pod has not started yet (Unschedulable, pulling the image...).
    source.addEventListener("waiting", function (event) {
      waiting = true;
      status.textContent = "Waiting for the try to start: " + event.data;
    });
    source.addEventListener("end", function (event) {
      ended = true;
      source.close();
      status.textContent = "End of the log: the try is " + event.data + ".";
      if (view.dataset.latest === "true") showState(event.data);
    });
    source.addEventListener("error", function () {
      source.close();
      if (ended) return;
      // EventSource hides the status: ask once with a plain read, which says why.
      fetch(url + join + "limit=1&offset=" + offset, { credentials: "same-origin" })
        .then(function (response) {
          if (response.status === 401 || response.status === 403 || response.status === 404) {
            return response.json().catch(function () { return {}; }).then(function (body) {
              ended = true;
              status.textContent = "The log cannot be read: " + (body.detail || response.status);
            });
          }
        })
        .catch(function () {})
        .finally(function () {
          if (ended) return;
          failures += 1;
          var wait = Math.min(1000 * failures, 5000);
          status.textContent = "Connection to the log lost; trying again in " + wait / 1000 + " s…";
          window.setTimeout(connect, wait);
        });
    });
  }

  connect();
})();
