// The classify page: each dropped or picked photo is sent as the raw body of POST /api/classify.
"use strict";
const token = new URLSearchParams(location.search).get("token");
const results = document.getElementById("results");
const status = document.getElementById("status");

function badge(label) {
  const span = document.createElement("span");
  span.className = `badge ${label}`;
  span.textContent = label;
  return span;
}

// Each photo's card is placed when it is picked, in the order picked; its picture and verdict come
// with the answer: a JPEG thumbnail the server draws from what it classified (a browser cannot show
// a HEIC or a RAW file itself).
function placeCard(file) {
  const card = document.createElement("div");
  card.className = "card";
  const img = document.createElement("img");
  img.alt = file.name;
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = file.name;
  name.title = file.name;
  const verdict = document.createElement("div");
  verdict.textContent = "classifying…";
  card.append(img, name, verdict);
  results.append(card);
  return {card, img, verdict};
}

async function classify(file, {card, img, verdict}) {
  const body = new FormData();
  body.append("file", file, file.name);  // the name tells the server a RAW file, as the command line's scan does
  const response = await fetch("/api/classify", {method: "POST", body});
  const answer = await response.json();
  verdict.textContent = "";
  if (!response.ok) {
    verdict.append(badge("error"), ` ${answer.error}`);
    card.dataset.label = "error";
    return;
  }
  img.src = answer.thumbnail;
  const p = document.createElement("span");
  p.className = "p";
  p.textContent = `p(cat) = ${answer.p_cat.toFixed(3)}`;
  verdict.append(badge(answer.label), p);
  card.dataset.label = answer.label;
  if (answer.label !== "not-cat") card.append(...attributes(answer));
}

// A cat's five likeliest breeds as bars, and its mood: only from a model with breed and mood heads.
function attributes(answer) {
  const parts = [];
  if (answer.breeds.length) {
    const list = document.createElement("ol");
    list.className = "breeds";
    list.setAttribute("aria-label", "the five likeliest breeds");
    for (const breed of answer.breeds) {
      const item = document.createElement("li");
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.round(breed.p * 100)}%`;
      const name = document.createElement("span");
      name.className = "breed";
      name.textContent = breed.name;
      const p = document.createElement("span");
      p.className = "p";
      p.textContent = breed.p.toFixed(2);
      item.append(bar, name, p);
      list.append(item);
    }
    const said = document.createElement("div");
    said.className = "said";
    said.textContent = answer.breed ? `breed: ${answer.breed}` : "breed: none sure (a domestic cat?)";
    parts.push(said, list);
  }
  if (answer.mood) {
    const mood = document.createElement("div");
    mood.className = "said mood";
    mood.textContent = `mood: ${answer.mood.name} ${answer.mood.p.toFixed(2)} `;
    const guess = document.createElement("span");
    guess.className = "guess";
    guess.textContent = "(a guess from one photo)";
    mood.append(guess);
    parts.push(mood);
  }
  return parts;
}

function classifyAll(files) {
  status.textContent = "";
  for (const file of files) {
    const parts = placeCard(file);
    classify(file, parts).catch((error) => { status.textContent = String(error); });
  }
}

const drop = document.getElementById("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  classifyAll(event.dataTransfer.files);
});
document.getElementById("pick").addEventListener("change", (event) => classifyAll(event.target.files));

fetch("/api/health").then((r) => r.json()).then((health) => {
  document.getElementById("model").textContent = `model: ${health.model}`;
  if (health.review && token) {
    const link = document.getElementById("review-link");
    link.href = `/review?token=${encodeURIComponent(token)}`;
    link.hidden = false;
  }
});
