// The review page: the run's photos grouped by the run's label, unsure first, each group sorted
// by p_cat from the least sure; a click or a key (c, n) corrects the photo in focus.
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
const groups = document.getElementById("groups");
const status = document.getElementById("status");
const GROUPS = ["unsure", "cat", "not-cat"];
const ORDER = {unsure: (a, b) => a.p_cat - b.p_cat, cat: (a, b) => a.p_cat - b.p_cat, "not-cat": (a, b) => b.p_cat - a.p_cat};
const cards = new Map();

function say(message, isError) {
  status.textContent = message;
  status.className = isError ? "error" : "";
}

function fill(card, entry) {
  card.dataset.label = entry.label;
  const verdict = card.querySelector(".verdict");
  verdict.textContent = "";
  const badge = document.createElement("span");
  badge.className = `badge ${entry.label}`;
  badge.textContent = entry.label;
  const p = document.createElement("span");
  p.className = "p";
  p.textContent = entry.p_cat === null ? "" : entry.p_cat.toFixed(3);
  verdict.append(badge, p);
  if (entry.label !== entry.run_label) {
    const note = document.createElement("span");
    note.className = "corrected";
    note.textContent = `corrected (was ${entry.run_label})`;
    verdict.append(note);
  }
  card.querySelector(".name").textContent = entry.name;
  card.querySelector(".name").title = entry.path;
  for (const button of card.querySelectorAll("button")) button.disabled = button.dataset.label === entry.label;
}

async function correct(card, label) {
  if (card.dataset.label === label) return;
  say("");
  const response = await fetch(`/api/review/${card.dataset.id}/label`, {
    method: "POST", headers: {"content-type": "application/json", "x-notcat-token": token},
    body: JSON.stringify({label}),
  });
  const answer = await response.json();
  if (!response.ok) {
    say(answer.error, true);
    return;
  }
  fill(card, answer);
  say(`${answer.name}: now ${answer.label} (${answer.path})`);
}

function makeCard(entry) {
  const card = document.createElement("div");
  card.className = "card";
  card.tabIndex = 0;
  card.dataset.id = entry.id;
  card.dataset.group = entry.run_label;
  const img = document.createElement("img");
  img.loading = "lazy";
  img.alt = entry.name;
  img.src = `/api/review/${entry.id}/thumbnail?token=${encodeURIComponent(token)}`;
  const name = document.createElement("div");
  name.className = "name";
  const verdict = document.createElement("div");
  verdict.className = "verdict";
  const actions = document.createElement("div");
  actions.className = "actions";
  for (const label of ["cat", "not-cat"]) {
    const button = document.createElement("button");
    button.dataset.label = label;
    button.textContent = label;
    button.addEventListener("click", () => correct(card, label));
    actions.append(button);
  }
  card.append(img, name, verdict, actions);
  fill(card, entry);
  cards.set(entry.id, card);
  return card;
}

function render(entries) {
  for (const group of GROUPS) {
    const members = entries.filter((entry) => entry.run_label === group).sort(ORDER[group]);
    if (!members.length) continue;
    const section = document.createElement("section");
    section.dataset.group = group;
    const title = document.createElement("h2");
    title.textContent = `${group} (${members.length})`;
    const grid = document.createElement("div");
    grid.className = "grid";
    grid.append(...members.map(makeCard));
    section.append(title, grid);
    groups.append(section);
  }
}

function visibleCards() {
  return [...groups.querySelectorAll(".card")].filter((card) => card.closest("section").hidden === false);
}

document.addEventListener("keydown", (event) => {
  const card = document.activeElement.closest && document.activeElement.closest(".card");
  const visible = visibleCards();
  if (event.key === "ArrowRight" || event.key === "ArrowLeft") {
    const at = visible.indexOf(card);
    const next = visible[Math.max(0, Math.min(visible.length - 1, at + (event.key === "ArrowRight" ? 1 : -1)))];
    if (next) next.focus();
    event.preventDefault();
  } else if (card && (event.key === "c" || event.key === "n")) {
    correct(card, event.key === "c" ? "cat" : "not-cat");
  }
});

for (const button of document.querySelectorAll("#filters button")) {
  button.addEventListener("click", () => {
    for (const other of document.querySelectorAll("#filters button")) other.classList.toggle("on", other === button);
    for (const section of groups.querySelectorAll("section")) {
      section.hidden = button.dataset.filter !== "all" && section.dataset.group !== button.dataset.filter;
    }
  });
}

async function load() {
  // The list comes a page at a time; this page still shows them all.
  const entries = [];
  let view = "", total = 1;
  while (entries.length < total) {
    const query = new URLSearchParams({token, offset: entries.length, limit: 500, view});
    const response = await fetch(`/api/review?${query}`);
    const answer = await response.json();
    if (!response.ok) {
      say(answer.error, true);
      return;
    }
    ({view, total} = answer);
    entries.push(...answer.entries);
    document.getElementById("report").textContent = `${answer.report}: ${total} photos`;
  }
  render(entries);
  const first = groups.querySelector(".card");
  if (first) first.focus();
  document.body.dataset.ready = "true";
}
load();
