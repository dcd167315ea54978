// lungseg review: one page of cards at a time, pictures as thumbnails, decisions posted one by one.
// Nothing here talks to any other server than the one that served the page.
"use strict";

const state = { page: 0, perPage: 24, show: "all", cards: [], focus: 0, data: null, viewer: false };
const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function pictureUrl(key, layer, size) {
  return `/api/picture?key=${encodeURIComponent(key)}&layer=${layer}&size=${size}`;
}

function showMessage(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = !text;
}

function readHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  state.page = Math.max(0, parseInt(params.get("page") || "0", 10) || 0);
  const perPage = params.get("per_page") || "24";
  state.perPage = [...$("per-page").options].some((o) => o.value === perPage) ? Number(perPage) : 24;
  const show = params.get("show") || "all";
  state.show = [...$("show").options].some((o) => o.value === show) ? show : "all";
  $("show").value = state.show;
  $("per-page").value = String(state.perPage);
}

function writeHash() {
  const hash = `#page=${state.page}&per_page=${state.perPage}&show=${state.show}`;
  if (location.hash !== hash) history.replaceState(null, "", hash);
}

async function load(focusLast) {
  const url = `/api/films?page=${state.page}&per_page=${state.perPage}&show=${state.show}`;
  const response = await fetch(url);
  if (!response.ok) {
    showMessage(`could not load the films: ${response.status} ${await response.text()}`);
    return;
  }
  const data = await response.json();
  state.data = data;
  state.page = data.page;
  writeHash();
  $("folder").textContent = data.folder;
  $("help-csv").textContent = data.review_csv;
  $("page-info").textContent = `page ${data.page + 1} of ${data.pages} (${data.total} films)`;
  $("prev").disabled = data.page === 0;
  $("next").disabled = data.page >= data.pages - 1;
  showCounts(data.counts);
  const main = $("cards");
  main.replaceChildren();
  state.cards = data.films.map((film) => {
    const card = makeCard(film);
    main.appendChild(card);
    return card;
  });
  if (!state.cards.length) main.appendChild(el("p", "problem", "no films to show here"));
  setFocus(focusLast ? state.cards.length - 1 : 0, false);
  window.scrollTo(0, 0);
}

function showCounts(c) {
  const box = $("counts");
  box.replaceChildren();
  const part = (label, value) => {
    box.append(`${label} `);
    box.appendChild(el("b", "", value));
    box.append("  ");
  };
  part("flagged", c.flagged);
  part("accepted", c.flagged_accepted);
  part("rejected", c.flagged_rejected);
  part("undecided", c.flagged_undecided);
  box.append(" | others: ");
  part("accepted", c.others_accepted);
  part("rejected", c.others_rejected);
  part("| notes", c.notes);
}

function fmt(value) {
  const number = Number(value);
  if (value === "" || Number.isNaN(number)) return value;
  return Number.isInteger(number) ? number.toLocaleString("en") : String(Number(number.toFixed(4)));
}

function makeCard(film) {
  const card = el("article", "card");
  card.tabIndex = -1;
  card.dataset.key = film.key;
  card.film = film;

  const pics = el("div", "pics");
  const filmImg = el("img", "film");
  filmImg.loading = "lazy";
  filmImg.alt = `film ${film.key}`;
  filmImg.src = pictureUrl(film.key, "film", "thumb");
  filmImg.addEventListener("error", () => explainBroken(card, filmImg.src));
  pics.appendChild(filmImg);
  if (film.has_mask) {
    const maskImg = el("img", "mask");
    maskImg.loading = "lazy";
    maskImg.alt = `mask ${film.key}`;
    maskImg.src = pictureUrl(film.key, "mask", "thumb");
    maskImg.addEventListener("error", () => explainBroken(card, maskImg.src));
    pics.appendChild(maskImg);
  }
  pics.addEventListener("click", () => { setFocus(state.cards.indexOf(card)); openViewer(); });
  card.appendChild(pics);

  const head = el("div", "head");
  head.append(el("span", "rank", `#${film.rank}`), el("span", "name", film.key));
  card.appendChild(head);
  card.appendChild(el("div", "badges"));
  const score = el("div", "score", "quality score ");
  score.appendChild(el("b", "", film.score === null ? "none" : film.score.toFixed(4)));
  card.appendChild(score);

  const figures = el("dl", "figures");
  const add = (list, name, value) => { list.append(el("dt", "", name), el("dd", "", fmt(value))); };
  if (film.plausibility && film.plausibility !== "ok") add(figures, "plausibility", film.plausibility);
  for (const [name, value] of Object.entries(film.figures)) add(figures, name, value);
  if (film.reason) add(figures, "reason", film.reason);
  card.appendChild(figures);
  const more = el("details");
  more.appendChild(el("summary", "", "more"));
  const moreList = el("dl");
  add(moreList, "input", film.input);
  for (const [name, value] of Object.entries(film.columns)) add(moreList, name, value);
  more.appendChild(moreList);
  card.appendChild(more);
  for (const problem of film.problems) card.appendChild(el("p", "problem", problem));

  const actions = el("div", "actions");
  for (const [decision, label, key] of [["accepted", "accept", "a"], ["rejected", "reject", "r"],
                                        ["", "clear", "x"]]) {
    const button = el("button", "", `${label} `);
    button.appendChild(el("kbd", "", key));
    button.type = "button";
    button.dataset.decision = decision;
    button.addEventListener("click", () => decide(card, decision, false));
    actions.appendChild(button);
  }
  card.appendChild(actions);
  const note = el("textarea", "note");
  note.placeholder = "note (n); Enter saves";
  note.rows = 1;
  note.value = film.note;
  note.addEventListener("keydown", (event) => {
    if ((event.key === "Enter" && !event.shiftKey) || event.key === "Escape") {
      event.preventDefault();
      if (event.key === "Escape") note.value = card.film.note;
      card.focus({ preventScroll: true });  // leaves the note: blur saves it
    }
    event.stopPropagation();
  });
  note.addEventListener("blur", () => {
    if (note.value.trim() !== card.film.note) saveNote(card, note.value);
  });
  card.appendChild(note);
  card.appendChild(el("div", "saved"));
  card.addEventListener("click", (event) => {
    if (event.target.closest("button, textarea, summary, .pics")) return;
    setFocus(state.cards.indexOf(card));
  });
  paint(card);
  return card;
}

async function explainBroken(card, url) {
  // The picture could not be made: say why in one line, as the server does.
  try {
    const response = await fetch(url);
    if (response.ok) return;
    const body = await response.json();
    if (![...card.querySelectorAll(".problem")].some((p) => p.textContent === body.error)) {
      card.insertBefore(el("p", "problem", body.error), card.querySelector(".actions"));
    }
  } catch (err) {
    // the server is gone: load() or decide() will say so
  }
}

function paint(card) {
  const film = card.film;
  card.classList.toggle("flagged", film.flagged);
  card.classList.toggle("refused", film.refused);
  card.classList.toggle("accepted", film.decision === "accepted");
  card.classList.toggle("rejected", film.decision === "rejected");
  const badges = card.querySelector(".badges");
  badges.replaceChildren();
  if (film.flagged) badges.appendChild(el("span", "badge review", "needs review"));
  if (film.refused) badges.appendChild(el("span", "badge refused", "refused"));
  else if (film.status && film.status !== "ok" && film.status !== "flagged") {
    badges.appendChild(el("span", "badge", film.status));
  }
  if (film.inverted) badges.appendChild(el("span", "badge", "inverted"));
  if (film.decision) badges.appendChild(el("span", `badge decision ${film.decision}`, film.decision));
  if (film.stale) badges.appendChild(el("span", "badge stale", "decided on an earlier mask"));
  for (const button of card.querySelectorAll(".actions button")) {
    button.classList.toggle("on", button.dataset.decision !== "" && button.dataset.decision === film.decision);
  }
  card.querySelector(".saved").textContent = film.decided_at ? `saved ${film.decided_at}` : "";
}

async function post(card, change) {
  const response = await fetch("/api/decision", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ key: card.film.key, ...change }),
  }).catch((err) => ({ ok: false, status: 0, json: async () => ({ error: `the server is gone (${err})` }) }));
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) {
    showMessage(body.error || body.detail || `HTTP ${response.status}`);
    return false;
  }
  showMessage("");
  card.film = body.film;
  paint(card);
  showCounts(body.counts);
  if (state.viewer && state.cards[state.focus] === card) caption();
  return true;
}

async function decide(card, decision, advance) {
  // Move on before the answer comes, so that the next key is for the next film however fast it
  // follows; a decision that fails to save says so and leaves its card as it was.
  if (advance && decision) move(1);
  await post(card, { decision });
}

async function saveNote(card, text) {
  const ok = await post(card, { note: text });
  if (!ok) card.querySelector("textarea.note").value = card.film.note;
}

function setFocus(index, scroll = true) {
  if (!state.cards.length) return;
  state.focus = Math.min(Math.max(index, 0), state.cards.length - 1);
  state.cards.forEach((card, i) => card.classList.toggle("focused", i === state.focus));
  const card = state.cards[state.focus];
  card.focus({ preventScroll: true });
  if (scroll) card.scrollIntoView({ block: "nearest" });
  if (state.viewer) openViewer();
}

async function move(step) {
  const next = state.focus + step;
  if (next >= state.cards.length && state.data && state.page < state.data.pages - 1) {
    state.page += 1;
    await load(false);
  } else if (next < 0 && state.page > 0) {
    state.page -= 1;
    await load(true);
  } else {
    setFocus(next);
  }
}

function openViewer() {
  const card = state.cards[state.focus];
  if (!card) return;
  const viewer = $("viewer");
  const film = card.film;
  viewer.querySelector("img.film").src = pictureUrl(film.key, "film", "full");
  const mask = viewer.querySelector("img.mask");
  mask.hidden = !film.has_mask;
  if (film.has_mask) mask.src = pictureUrl(film.key, "mask", "full");
  caption();
  if (!viewer.open) viewer.showModal();
  state.viewer = true;
}

function caption() {
  const film = state.cards[state.focus].film;
  const score = film.score === null ? "none" : film.score.toFixed(4);
  $("viewer-caption").textContent = `#${film.rank} ${film.key}: quality score ${score}` +
    `${film.flagged ? ", needs review" : ""}${film.decision ? `, ${film.decision}` : ""}` +
    `${film.note ? ` (${film.note})` : ""}`;
}

function setMask(on) {
  $("mask-toggle").checked = on;
  document.body.classList.toggle("no-mask", !on);
  localStorage.setItem("lungseg-review-mask", on ? "1" : "0");
}

function setOpacity(value) {
  const v = Math.min(1, Math.max(0, Math.round(value * 20) / 20));
  $("opacity").value = String(v);
  document.documentElement.style.setProperty("--mask-opacity", String(v));
  localStorage.setItem("lungseg-review-opacity", String(v));
}

function turnPage(step) {
  if (!state.data) return;
  const page = state.page + step;
  if (page < 0 || page >= state.data.pages) return;
  state.page = page;
  load(false);
}

function onKey(event) {
  if (event.target.closest && event.target.closest("textarea, input, select")) return;
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const card = state.cards[state.focus];
  const keys = {
    j: () => move(1), ArrowRight: () => move(1), k: () => move(-1), ArrowLeft: () => move(-1),
    a: () => card && decide(card, "accepted", true), r: () => card && decide(card, "rejected", true),
    x: () => card && decide(card, "", false),
    n: () => { if (state.viewer) $("viewer").close(); card && card.querySelector("textarea.note").focus(); },
    m: () => setMask(!$("mask-toggle").checked),
    "-": () => setOpacity(Number($("opacity").value) - 0.1),
    "=": () => setOpacity(Number($("opacity").value) + 0.1),
    "+": () => setOpacity(Number($("opacity").value) + 0.1),
    o: () => openViewer(), Enter: () => openViewer(),
    "[": () => turnPage(-1), "]": () => turnPage(1),
    "?": () => $("help").showModal(),
  };
  const action = keys[event.key];
  if (action) {
    event.preventDefault();
    action();
  }
}

function init() {
  readHash();
  setMask(localStorage.getItem("lungseg-review-mask") !== "0");
  setOpacity(Number(localStorage.getItem("lungseg-review-opacity") || "0.8"));
  $("mask-toggle").addEventListener("change", (e) => setMask(e.target.checked));
  $("opacity").addEventListener("input", (e) => setOpacity(Number(e.target.value)));
  $("show").addEventListener("change", (e) => { state.show = e.target.value; state.page = 0; load(false); });
  $("per-page").addEventListener("change", (e) => {
    state.page = Math.floor((state.page * state.perPage) / Number(e.target.value));
    state.perPage = Number(e.target.value);
    load(false);
  });
  $("prev").addEventListener("click", () => turnPage(-1));
  $("next").addEventListener("click", () => turnPage(1));
  $("help-button").addEventListener("click", () => $("help").showModal());
  $("viewer").addEventListener("close", () => { state.viewer = false; });
  $("viewer").addEventListener("click", (e) => { if (e.target === $("viewer")) $("viewer").close(); });
  document.addEventListener("keydown", onKey);
  window.addEventListener("hashchange", () => { readHash(); load(false); });
  load(false);
}

document.addEventListener("DOMContentLoaded", init);
