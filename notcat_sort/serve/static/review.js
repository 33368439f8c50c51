// The review page for a whole library. The server filters, orders and pages the photos (a "view");
// this page keeps only the cards on screen (and a screen's worth either side) in the document,
// fetches the pages of the view they need, and draws each thumbnail once its card has stayed a
// moment. Corrections go to the selection or the photo in focus; each is a step that undo takes back.
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
const PAGE = 200; // photos per request
const CHUNK = 100; // photos per correction request, so that a big selection shows its progress
const CARD_MIN = 200; // px: the narrowest a card gets
const BUFFER_ROWS = 3; // rows kept above and below the screen
const IMAGE_DELAY = 120; // ms a card stays before its thumbnail is asked for (no requests while flinging past)
const LABELS = ["cat", "not-cat", "unsure"];
const SHOWN_LABELS = ["all", "unsure", "cat", "not-cat", "error"];

const grid = document.getElementById("grid");
const toolbar = document.getElementById("toolbar");
const statusLine = document.getElementById("status");
const state = {
  view: "", total: 0, generation: 0, pages: new Map(), loading: new Map(), byId: new Map(),
  label: "all", filters: {}, order: "doubt", columns: 1, width: 0, rowHeight: 274, gap: 12,
  focus: 0, anchor: 0, selected: new Set(), undo: [], counts: {}, cards: new Map(), busy: false,
};

function say(message, isError) {
  statusLine.textContent = message;
  statusLine.className = isError ? "error" : "";
  statusLine.title = "";
}

function withToken(path, query) {
  const params = new URLSearchParams(query);
  params.set("token", token);
  return `${path}?${params}`;
}

async function getJson(path, query) {
  const response = await fetch(withToken(path, query));
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || response.statusText);
  return answer;
}

async function postJson(path, body) {
  const response = await fetch(path, {
    method: "POST", headers: {"content-type": "application/json", "x-notcat-token": token}, body: JSON.stringify(body),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || response.statusText);
  return answer;
}

// --- what is asked for ---------------------------------------------------------------------------

// The view is in the page's own address (/review?label=cat&breed=Siamese&order=path): a link, a
// bookmark or a reload shows the same photos. Every parameter but these is a filter.
const NOT_FILTERS = new Set(["token", "label", "order", "view", "offset", "limit"]);

function viewFromAddress() {
  const params = new URLSearchParams(location.search);
  state.label = SHOWN_LABELS.includes(params.get("label")) ? params.get("label") : "all";
  state.order = params.get("order") || state.order;
  for (const [name, value] of params) if (!NOT_FILTERS.has(name)) state.filters[name] = value;
}

function filterQuery() {
  const query = new URLSearchParams({order: state.order});
  if (state.label !== "all") query.append("label", state.label);
  for (const [name, value] of Object.entries(state.filters)) if (value !== "") query.append(name, value);
  return query;
}

async function fetchPage(number) {
  if (state.pages.has(number) || state.loading.has(number)) return;
  const generation = state.generation;
  const query = filterQuery();
  query.set("view", state.view);
  query.set("offset", number * PAGE);
  query.set("limit", PAGE);
  const loading = getJson("/api/review", query).then((answer) => {
    if (generation !== state.generation) return;
    if (answer.view !== state.view) { // the server forgot the view (restarted): start again
      reload();
      return;
    }
    store(number, answer);
    render();
  }).catch((error) => say(error.message, true)).finally(() => state.loading.delete(number));
  state.loading.set(number, loading);
}

function store(number, answer) {
  state.pages.set(number, answer.entries);
  for (const entry of answer.entries) state.byId.set(entry.id, entry);
  showCounts(answer.counts);
  showKnownCats(answer.known_cats);
}

function showKnownCats(known) {
  // The cats named so far, where they are kept, and the command that sorts by them.
  const holder = document.getElementById("known-cats");
  document.getElementById("naming").hidden = !known;
  if (!known) return;
  state.knownCommand = known.command;
  const names = Object.entries(known.cats);
  holder.textContent = names.length ? "named: " : "no cat named yet";
  names.forEach(([name, count], number) => {
    holder.append(number ? ", " : "", Object.assign(document.createElement("b"), {textContent: name}), ` (${count})`);
  });
  holder.title = `kept in ${known.folder}; the next run that sorts by them: ${known.command}`;
  const list = document.getElementById("cat-names");
  list.textContent = "";
  for (const [name] of names) list.append(new Option(name));
}

function entryAt(index) {
  const page = state.pages.get(Math.floor(index / PAGE));
  return page ? page[index % PAGE] : undefined;
}

async function reload() {
  state.generation += 1;
  const generation = state.generation;
  state.pages.clear();
  state.byId.clear();
  state.selected.clear();
  state.focus = state.anchor = 0;
  say("");
  try {
    const answer = await getJson("/api/review", filterQuery());
    if (generation !== state.generation) return;
    state.view = answer.view;
    state.total = answer.total;
    history.replaceState(null, "", withToken("/review", filterQuery()));
    const inUse = Object.values(state.filters).filter((value) => value !== "").length;
    document.getElementById("filters-button").textContent = inUse ? `filters (${inUse})` : "filters";
    document.getElementById("report").textContent = answer.report;
    document.getElementById("report").title = `corrections go to ${answer.corrections}`;
    buildFilters(answer.filters);
    store(0, answer);
  } catch (error) {
    say(error.message, true);
    return;
  }
  for (const card of state.cards.values()) card.remove();
  state.cards.clear();
  document.getElementById("empty").hidden = state.total > 0;
  window.scrollTo(0, 0);
  layout();
  showSelection();
  document.body.dataset.ready = "true";
}

// --- the toolbar ---------------------------------------------------------------------------------

function showCounts(counts) {
  state.counts = counts;
  const labels = document.getElementById("labels");
  if (!labels.childElementCount) {
    for (const label of SHOWN_LABELS) {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.label = label;
      button.append(label, Object.assign(document.createElement("span"), {className: "count"}));
      button.addEventListener("click", () => { state.label = label; reload(); });
      labels.append(button);
    }
  }
  for (const button of labels.children) {
    const label = button.dataset.label;
    button.classList.toggle("on", label === state.label);
    button.querySelector(".count").textContent = (counts[label] || 0).toLocaleString();
    button.hidden = label === "error" && !counts.error && state.label !== "error";
  }
  const corrected = counts.corrected ? ` · ${counts.corrected.toLocaleString()} corrected` : "";
  document.title = `notcat-sort: review (${counts.all.toLocaleString()} photos${corrected})`;
  document.getElementById("report").dataset.corrected = counts.corrected;
}

let filtersBuilt = false;

function buildFilters(described) {
  // Controls for every filter the server describes, but the label (the buttons above).
  const holder = document.getElementById("more-filters");
  if (filtersBuilt) {
    for (const filter of described) {
      const select = holder.querySelector(`select[name="${filter.name}"]`);
      if (select) fillChoices(select, filter.values, state.filters[filter.name] || "");
    }
    return;
  }
  filtersBuilt = true;
  for (const filter of described) {
    if (filter.name === "label") continue;
    const label = document.createElement("label");
    label.append(filter.label, " ");
    if (filter.kind === "choice") {
      if (!Object.keys(filter.values).length && !state.filters[filter.name]) continue;
      const select = document.createElement("select");
      select.name = filter.name;
      fillChoices(select, filter.values, state.filters[filter.name] || "");
      select.addEventListener("change", () => { state.filters[filter.name] = select.value; reload(); });
      label.append(select);
    } else if (filter.kind === "range") {
      for (const end of ["min", "max"]) {
        const input = Object.assign(document.createElement("input"), {type: "number", min: 0, max: 1, step: 0.05, placeholder: end});
        input.name = `${filter.name}_${end}`;
        input.value = state.filters[input.name] || "";
        input.addEventListener("change", () => { state.filters[input.name] = input.value; reload(); });
        label.append(input, end === "min" ? "–" : "");
      }
    } else {
      const input = Object.assign(document.createElement("input"), {type: "search", placeholder: "any"});
      input.name = filter.name;
      input.value = state.filters[filter.name] || "";
      let waiting = 0;
      input.addEventListener("input", () => {
        clearTimeout(waiting);
        waiting = setTimeout(() => { state.filters[filter.name] = input.value; reload(); }, 300);
      });
      label.append(input);
    }
    holder.append(label);
  }
}

function fillChoices(select, values, chosen) {
  select.textContent = "";
  select.append(new Option("any", ""));
  for (const [value, count] of Object.entries(values)) select.append(new Option(`${value} (${count.toLocaleString()})`, value));
  if (chosen && !(chosen in values)) select.append(new Option(`${chosen} (0)`, chosen)); // asked for by the address
  select.value = chosen;
}

function showSelection() {
  const count = state.selected.size;
  document.getElementById("selected-count").textContent = count
    ? `${count.toLocaleString()} selected` : `${state.total.toLocaleString()} shown, none selected`;
  document.getElementById("select-all").textContent = `select all ${state.total.toLocaleString()}`;
  const undo = document.getElementById("undo");
  const last = state.undo[state.undo.length - 1];
  undo.disabled = !last || state.busy;
  undo.textContent = last ? `undo (${last.length.toLocaleString()})` : "undo";
  for (const button of document.querySelectorAll("#selection [data-set], #name-button")) {
    button.disabled = state.busy || (!count && !entryAt(state.focus));
  }
}

// --- the grid ------------------------------------------------------------------------------------

function layout() {
  const style = getComputedStyle(document.body);
  state.gap = parseFloat(style.getPropertyValue("--gap")) || 12;
  state.rowHeight = (parseFloat(style.getPropertyValue("--card-height")) || 262) + state.gap;
  state.width = grid.clientWidth;
  state.columns = Math.max(1, Math.floor((state.width + state.gap) / (CARD_MIN + state.gap)));
  grid.style.height = `${Math.ceil(state.total / state.columns) * state.rowHeight}px`;
  for (const card of state.cards.values()) card.remove();
  state.cards.clear();
  render();
}

function visibleRows() {
  const top = window.scrollY + toolbar.offsetHeight - grid.offsetTop;
  const first = Math.max(0, Math.floor(top / state.rowHeight));
  const last = Math.floor((window.scrollY + window.innerHeight - grid.offsetTop) / state.rowHeight);
  return [first, Math.max(first, last)];
}

function render() {
  const [firstVisible, lastVisible] = visibleRows();
  const from = Math.max(0, (firstVisible - BUFFER_ROWS) * state.columns);
  const to = Math.min(state.total, (lastVisible + BUFFER_ROWS + 1) * state.columns);
  for (const [index, card] of state.cards) {
    if (index < from || index >= to) {
      clearTimeout(card.imageTimer);
      card.remove();
      state.cards.delete(index);
    }
  }
  const cardWidth = (state.width - state.gap * (state.columns - 1)) / state.columns;
  for (let index = from; index < to; index += 1) {
    const entry = entryAt(index);
    if (!entry) fetchPage(Math.floor(index / PAGE));
    let card = state.cards.get(index);
    if (!card) {
      card = makeCard(index);
      card.style.width = `${cardWidth}px`;
      card.style.left = `${(index % state.columns) * (cardWidth + state.gap)}px`;
      card.style.top = `${Math.floor(index / state.columns) * state.rowHeight}px`;
      state.cards.set(index, card);
      grid.append(card);
    }
    if (entry && card.dataset.entry !== String(entry.id)) fill(card, entry);
    else if (entry) paint(card, entry);
    card.classList.toggle("selected", Boolean(entry) && state.selected.has(entry.id));
    card.tabIndex = index === state.focus ? 0 : -1;
  }
  const focused = state.cards.get(state.focus);
  if (focused && grid.contains(document.activeElement) && document.activeElement !== focused) focused.focus({preventScroll: true});
}

function makeCard(index) {
  const card = document.createElement("div");
  card.className = "card placeholder";
  card.dataset.index = index;
  return card;
}

function fill(card, entry) {
  // A card's parts, made once for its photo; paint() shows what can change.
  clearTimeout(card.imageTimer);
  card.textContent = "";
  card.className = "card";
  card.dataset.entry = entry.id;
  const tick = Object.assign(document.createElement("input"), {type: "checkbox", className: "tick", tabIndex: -1});
  tick.setAttribute("aria-label", "select");
  const img = document.createElement("img");
  img.alt = entry.name;
  img.decoding = "async";
  card.imageTimer = setTimeout(() => { img.src = withToken(`/api/review/${entry.id}/thumbnail`, {}); }, IMAGE_DELAY);
  const name = Object.assign(document.createElement("div"), {className: "name", textContent: entry.name});
  const verdict = Object.assign(document.createElement("div"), {className: "verdict"});
  const meta = Object.assign(document.createElement("div"), {className: "meta"});
  const actions = Object.assign(document.createElement("div"), {className: "actions"});
  for (const label of LABELS) {
    const button = Object.assign(document.createElement("button"), {type: "button", textContent: label, tabIndex: -1});
    button.dataset.label = label;
    actions.append(button);
  }
  card.append(img, tick, name, verdict, meta, actions);
  paint(card, entry);
}

function paint(card, entry) {
  card.dataset.label = entry.label;
  card.querySelector(".name").title = entry.path;
  const verdict = card.querySelector(".verdict");
  verdict.textContent = "";
  verdict.append(Object.assign(document.createElement("span"), {className: `badge ${entry.label}`, textContent: entry.label}));
  if (entry.p_cat !== null) verdict.append(Object.assign(document.createElement("span"), {className: "p", textContent: entry.p_cat.toFixed(3)}));
  if (entry.label !== entry.run_label) {
    verdict.append(Object.assign(document.createElement("span"), {className: "corrected", textContent: `was ${entry.run_label}`}));
  }
  const meta = card.querySelector(".meta");
  const folder = entry.folder.split("/").slice(-2).join("/");
  meta.textContent = "";
  if (entry.known) meta.append(Object.assign(document.createElement("span"), {className: "known", textContent: entry.known}), " · ");
  const guessed = entry.label === "cat" ? [entry.breed, entry.mood && `${entry.mood}?`] : [];
  meta.append(entry.label === "error" ? entry.error : [entry.known ? "" : entry.cat, ...guessed, `…/${folder}`].filter(Boolean).join(" · "));
  meta.title = entry.label === "error" ? entry.error : entry.folder;
  card.classList.toggle("changed", state.label !== "all" && entry.label !== state.label);
  card.querySelector(".tick").checked = state.selected.has(entry.id);
  for (const button of card.querySelectorAll(".actions button")) {
    button.disabled = button.dataset.label === entry.label || entry.label === "error";
  }
}

function repaint(entries) {
  for (const entry of entries) {
    const known = state.byId.get(entry.id);
    if (known) Object.assign(known, entry);
  }
  const ids = new Set(entries.map((entry) => entry.id));
  for (const card of state.cards.values()) {
    if (ids.has(Number(card.dataset.entry))) paint(card, state.byId.get(Number(card.dataset.entry)));
  }
}

// --- focus and selection -------------------------------------------------------------------------

function moveFocus(index, extend) {
  if (!state.total) return;
  state.focus = Math.max(0, Math.min(state.total - 1, index));
  if (extend) selectRange(state.anchor, state.focus);
  else state.anchor = state.focus;
  scrollToIndex(state.focus);
  render();
  const card = state.cards.get(state.focus);
  if (card) card.focus({preventScroll: true});
  showSelection();
}

function scrollToIndex(index) {
  const top = grid.offsetTop + Math.floor(index / state.columns) * state.rowHeight;
  const shownFrom = window.scrollY + toolbar.offsetHeight;
  if (top < shownFrom) window.scrollTo(0, top - toolbar.offsetHeight - state.gap);
  else if (top + state.rowHeight > window.scrollY + window.innerHeight) window.scrollTo(0, top + state.rowHeight - window.innerHeight);
}

async function idsBetween(from, to) {
  // The photo numbers at positions from..to of the view, fetching the pages between if need be.
  const [low, high] = from < to ? [from, to] : [to, from];
  const pages = [];
  for (let page = Math.floor(low / PAGE); page <= Math.floor(high / PAGE); page += 1) {
    if (!state.pages.has(page)) fetchPage(page);
    pages.push(state.loading.get(page));
  }
  await Promise.all(pages);
  const ids = [];
  for (let index = low; index <= high; index += 1) {
    const entry = entryAt(index);
    if (entry) ids.push(entry.id);
  }
  return ids;
}

async function selectRange(from, to) {
  for (const id of await idsBetween(from, to)) state.selected.add(id);
  render();
  showSelection();
}

function toggle(index) {
  const entry = entryAt(index);
  if (!entry) return;
  if (state.selected.has(entry.id)) state.selected.delete(entry.id);
  else state.selected.add(entry.id);
  render();
  showSelection();
}

async function selectAll() {
  try {
    const answer = await getJson("/api/review/ids", {view: state.view, ...Object.fromEntries(filterQuery())});
    for (const id of answer.ids) state.selected.add(id);
  } catch (error) {
    say(error.message, true);
  }
  render();
  showSelection();
}

function clearSelection() {
  state.selected.clear();
  render();
  showSelection();
}

// --- corrections and undo ------------------------------------------------------------------------

function target() {
  // The selection, else the photo in focus.
  if (state.selected.size) return [...state.selected];
  const entry = entryAt(state.focus);
  return entry ? [entry.id] : [];
}

async function send(path, ids, body, verb) {
  // Send `ids` in chunks; returns the photos changed. Says how far it got and what was refused.
  state.busy = true;
  showSelection();
  const changed = [], refused = [];
  try {
    for (let start = 0; start < ids.length; start += CHUNK) {
      if (ids.length > CHUNK) say(`${start.toLocaleString()} of ${ids.length.toLocaleString()} photos ${verb}…`);
      const answer = await postJson(path, {...body, ids: ids.slice(start, start + CHUNK)});
      changed.push(...answer.entries);
      refused.push(...answer.refused);
      repaint(answer.entries);
      showCounts(answer.counts);
      showKnownCats(answer.known_cats);
    }
  } catch (error) {
    refused.push({id: null, error: error.message});
  } finally {
    state.busy = false;
  }
  const first = changed[0];
  const done = changed.length === 1 ? `${first.name}: ${verb}` : `${changed.length.toLocaleString()} photos ${verb}`;
  const problems = refused.length ? `; ${refused.length} refused: ${refused[0].error}` : "";
  say(changed.length || !refused.length ? done + problems : problems.slice(2), refused.length > 0);
  statusLine.title = changed.map((entry) => entry.path).slice(0, 20).join("\n");
  showSelection();
  return changed;
}

async function correct(ids, label) {
  if (!ids.length || state.busy) return;
  const changed = await send("/api/review/label", ids, {label}, `now ${label}`);
  if (changed.length) state.undo.push(changed.map((entry) => entry.id));
  showSelection();
}

async function nameCat(ids, catName) {
  if (!ids.length || state.busy) return;
  const changed = await send("/api/review/name", ids, {name: catName}, `named ${catName}`);
  if (changed.length) {
    state.undo.push(changed.map((entry) => entry.id));
    statusLine.textContent += `: the next run with --group-cats --known-cats puts them, and the photos like them, in cat/${catName}/`;
    statusLine.title = state.knownCommand;
  }
  showSelection();
}

async function undo() {
  const step = state.undo.pop();
  if (!step || state.busy) return;
  await send("/api/review/undo", step, {}, "back as they were");
}

// --- events --------------------------------------------------------------------------------------

grid.addEventListener("click", (event) => {
  const card = event.target.closest(".card");
  if (!card || !card.dataset.entry) return;
  const index = Number(card.dataset.index);
  const button = event.target.closest(".actions button");
  if (button) {
    moveFocus(index, false);
    correct([Number(card.dataset.entry)], button.dataset.label);
  } else if (event.shiftKey) {
    state.focus = index;
    selectRange(state.anchor, index);
  } else if (event.ctrlKey || event.metaKey || event.target.classList.contains("tick")) {
    moveFocus(index, false);
    toggle(index);
  } else {
    moveFocus(index, false);
  }
});

document.addEventListener("keydown", (event) => {
  if (event.target.closest && event.target.closest("input, select")) return;
  if (event.target.closest && event.target.closest("#toolbar button") && (event.key === " " || event.key === "Enter")) return;
  const rowsPerScreen = Math.max(1, Math.floor((window.innerHeight - toolbar.offsetHeight) / state.rowHeight));
  const moves = {
    ArrowRight: 1, ArrowLeft: -1, ArrowDown: state.columns, ArrowUp: -state.columns,
    PageDown: rowsPerScreen * state.columns, PageUp: -rowsPerScreen * state.columns,
  };
  if (event.key in moves) {
    moveFocus(state.focus + moves[event.key], event.shiftKey);
  } else if (event.key === "Home" || event.key === "End") {
    moveFocus(event.key === "Home" ? 0 : state.total - 1, event.shiftKey);
  } else if (event.key === " ") {
    toggle(state.focus);
  } else if ((event.ctrlKey || event.metaKey) && event.key === "a") {
    selectAll();
  } else if (event.key === "Escape") {
    clearSelection();
  } else if (event.key === "z" && !event.altKey) {
    undo();
  } else if (!event.ctrlKey && !event.metaKey && !event.altKey && ["c", "n", "u"].includes(event.key)) {
    correct(target(), {c: "cat", n: "not-cat", u: "unsure"}[event.key]);
  } else {
    return;
  }
  event.preventDefault();
});

for (const button of document.querySelectorAll("#selection [data-set]")) {
  button.addEventListener("click", () => correct(target(), button.dataset.set));
}
document.getElementById("naming").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("cat-name");
  nameCat(target(), input.value.trim());
});
document.getElementById("select-all").addEventListener("click", selectAll);
document.getElementById("select-none").addEventListener("click", clearSelection);
document.getElementById("undo").addEventListener("click", undo);
document.getElementById("order").addEventListener("change", (event) => { state.order = event.target.value; reload(); });
document.getElementById("filters-button").addEventListener("click", (event) => {
  const open = document.getElementById("filters").classList.toggle("open");
  event.target.setAttribute("aria-expanded", String(open));
});
document.getElementById("keys-button").addEventListener("click", (event) => {
  const keys = document.getElementById("keys");
  keys.hidden = !keys.hidden;
  event.target.setAttribute("aria-expanded", String(!keys.hidden));
});
document.getElementById("classify-link").href = `/?token=${encodeURIComponent(token)}`;
let scheduled = false;
window.addEventListener("scroll", () => {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => { scheduled = false; render(); });
}, {passive: true});
window.addEventListener("resize", () => { if (grid.clientWidth !== state.width) layout(); else render(); });
viewFromAddress();
document.getElementById("order").value = state.order;
reload().then(() => { const first = state.cards.get(0); if (first) first.focus({preventScroll: true}); });
