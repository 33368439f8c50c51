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

async function classify(file) {
  const card = document.createElement("div");
  card.className = "card";
  const img = document.createElement("img");
  img.src = URL.createObjectURL(file);
  img.alt = file.name;
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = file.name;
  const verdict = document.createElement("div");
  verdict.textContent = "classifying…";
  card.append(img, name, verdict);
  results.prepend(card);
  const response = await fetch("/api/classify", {
    method: "POST", body: file, headers: {"content-type": file.type || "application/octet-stream"},
  });
  const answer = await response.json();
  verdict.textContent = "";
  if (!response.ok) {
    verdict.append(badge("error"), ` ${answer.error}`);
    return;
  }
  const p = document.createElement("span");
  p.className = "p";
  p.textContent = `p(cat) = ${answer.p_cat.toFixed(3)}`;
  verdict.append(badge(answer.label), p);
  card.dataset.label = answer.label;
}

function classifyAll(files) {
  status.textContent = "";
  for (const file of files) classify(file).catch((error) => { status.textContent = String(error); });
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
