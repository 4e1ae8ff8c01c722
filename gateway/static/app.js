// The try-it page: every action is one call to the /v1/face API, images sent as
// multipart/form-data file parts (the same fields as the JSON API).
"use strict";

const KEY_STORE = "face-api-key";
const PAGE_SIZE = 10;
const $ = (root, selector) => root.querySelector(selector);

// -- API calls --------------------------------------------------------------------------

class ApiError extends Error {}

async function api(method, path, body) {
  const headers = {};
  const key = localStorage.getItem(KEY_STORE);
  if (key) headers["x-api-key"] = key;
  if (body && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(body);
  }
  const response = await fetch(path, { method, headers, body });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (response.status === 401 && await askKey(data?.error?.message)) {
    return api(method, path, body instanceof FormData || body === undefined ? body : JSON.parse(body));
  }
  if (!response.ok) throw new ApiError(data?.error?.message || `HTTP ${response.status}`);
  return data;
}

function askKey(reason) {
  const dialog = document.getElementById("key-dialog");
  $(dialog, ".why").textContent = reason || "This gateway asks for an API key.";
  $(dialog, "input").value = localStorage.getItem(KEY_STORE) || "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      const key = $(dialog, "input").value.trim();
      const saved = dialog.returnValue === "save" && key !== "";
      if (saved) localStorage.setItem(KEY_STORE, key);
      resolve(saved);
    }, { once: true });
  });
}

function form(fields) {
  const data = new FormData();
  const model = document.getElementById("model").value;
  if (model) data.append("model", model);
  for (const [name, value] of Object.entries(fields)) {
    if (value !== undefined && value !== null && value !== "") data.append(name, value);
  }
  return data;
}

// -- photos: file picker, drag-and-drop, webcam; face boxes drawn over them --------------

class Photo {
  constructor(element) {
    element.append(document.getElementById("photo-template").content.cloneNode(true));
    this.element = element;
    this.canvas = $(element, "canvas");
    this.input = $(element, "input[type=file]");
    this.file = null;
    const drop = $(element, ".drop");
    drop.addEventListener("click", () => this.input.click());
    drop.addEventListener("keydown", (e) => { if (e.key === "Enter") this.input.click(); });
    this.input.addEventListener("change", () => this.input.files[0] && this.load(this.input.files[0]));
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      if (e.dataTransfer.files[0]) this.load(e.dataTransfer.files[0]);
    });
    $(element, ".camera").addEventListener("click", () => capture().then((blob) => {
      if (blob) this.load(new File([blob], "webcam.jpg", { type: "image/jpeg" }));
    }));
  }

  async load(file) {
    this.file = file;
    try {
      this.image = await createImageBitmap(file);
    } catch {  // the gateway will say what is wrong with it; keep the file to send
      this.image = null;
      this.canvas.hidden = true;
      $(this.element, ".hint").hidden = false;
      $(this.element, ".hint").textContent = `${file.name} (no preview)`;
      return;
    }
    const scale = Math.min(1, 480 / this.image.width, 360 / this.image.height);
    this.canvas.width = Math.round(this.image.width * scale);
    this.canvas.height = Math.round(this.image.height * scale);
    this.scale = scale;
    this.draw([]);
    this.canvas.hidden = false;
    $(this.element, ".hint").hidden = true;
  }

  // boxes: [{x, y, w, h, label, good}] in the image's own pixels
  draw(boxes) {
    if (!this.image) return;
    const ctx = this.canvas.getContext("2d");
    ctx.drawImage(this.image, 0, 0, this.canvas.width, this.canvas.height);
    ctx.lineWidth = 3;
    ctx.font = "600 14px system-ui, sans-serif";
    // What the boxes say, for screen readers (and tests): a canvas has no text of its own.
    this.canvas.setAttribute("aria-label", boxes.map((b) => b.label).filter(Boolean).join("; "));
    for (const box of boxes) {
      const [x, y, w, h] = [box.x, box.y, box.w, box.h].map((v) => v * this.scale);
      ctx.strokeStyle = ctx.fillStyle = box.good === false ? "#e5484d" : "#30a46c";
      ctx.strokeRect(x, y, w, h);
      if (box.label) {
        const width = ctx.measureText(box.label).width + 10;
        const top = y > 22 ? y - 22 : y + h;
        ctx.fillRect(x - 1.5, top, width, 22);
        ctx.fillStyle = "#fff";
        ctx.fillText(box.label, x + 4, top + 16);
      }
    }
  }

  required(name) {
    if (!this.file) throw new ApiError(`choose a photo for ${name} first`);
    return this.file;
  }
}

function capture() {
  const dialog = document.getElementById("camera-dialog");
  const video = $(dialog, "video");
  const problem = $(dialog, ".error");
  problem.hidden = true;
  dialog.showModal();
  const stream = navigator.mediaDevices?.getUserMedia({ video: true, audio: false });
  (stream || Promise.reject(new Error("this browser offers no camera here (it needs https or localhost)")))
    .then((s) => { video.srcObject = s; })
    .catch((err) => { problem.textContent = `camera unavailable: ${err.message}`; problem.hidden = false; });
  return new Promise((resolve) => {
    const done = (blob) => {
      video.srcObject?.getTracks().forEach((track) => track.stop());
      video.srcObject = null;
      dialog.close();
      resolve(blob);
    };
    dialog.querySelectorAll("button").forEach((button) => {
      button.onclick = () => {
        if (button.value !== "capture" || !video.videoWidth) return done(null);
        const canvas = document.createElement("canvas");
        canvas.width = video.videoWidth;
        canvas.height = video.videoHeight;
        canvas.getContext("2d").drawImage(video, 0, 0);
        canvas.toBlob(done, "image/jpeg", 0.92);
      };
    });
  });
}

// -- sections ---------------------------------------------------------------------------

function section(id, run) {
  const root = document.getElementById(id);
  const photos = {};
  root.querySelectorAll(".photo").forEach((el) => { photos[el.dataset.field] = new Photo(el); });
  const result = $(root, ".result");
  $(root, "form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $(root, "button[type=submit]");
    button.disabled = true;
    result.className = "result busy";
    result.textContent = "Working…";
    try {
      result.replaceChildren(...await run(photos, new FormData(event.target)));
      result.className = "result";
    } catch (err) {
      result.className = "result error";
      result.textContent = err instanceof ApiError ? err.message : `request failed: ${err.message}`;
    } finally {
      button.disabled = false;
    }
  });
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function facts(pairs) {
  return el("dl", {}, ...pairs.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, String(value))]));
}

const pct = (v) => `${(v * 100).toFixed(1)}%`;  // a 0-1 score
const of100 = (v) => `${v.toFixed(1)}%`;  // confidence and gender scores are 0-100
const box = (area, label, good) => ({ x: area.x, y: area.y, w: area.w, h: area.h, label, good });
// A face's quality on its box ("q 87", then the codes of the reasons it is below the gate)
// and as rows of facts (each reason in full, with its measured value and bound).
const qualityLabel = (q) => !q ? "" :
  [`q ${Math.round(q.score)}`, ...new Set(q.reasons.map((r) => r.split(":")[0]))].join(" ");
const qualityRows = (q, name = "quality") => !q ? [] : [[name, Math.round(q.score)],
  ...q.reasons.map((reason) => ["below the gate", reason])];
const joined = (...parts) => parts.filter(Boolean).join(" · ");

section("verify", async (photos, data) => {
  const live = data.get("anti_spoofing") === "true";
  const r = await api("POST", "/v1/face/verify", form({
    img1: photos.img1.required("the first photo"), img2: photos.img2.required("the second photo"),
    anti_spoofing: live ? "true" : "",
  }));
  for (const n of [1, 2]) {
    const real = r[`img${n}_is_real`];
    const label = real === undefined ? "" : real ? "real" : "spoof";
    const q = r[`img${n}_quality`];
    photos[`img${n}`].draw([box(r[`img${n}_area`], joined(label, qualityLabel(q)),
                                r.verified && real !== false)]);
  }
  const rows = [["distance", r.distance.toFixed(3)], ["threshold", r.threshold],
                ["confidence", of100(r.confidence)], ["model", r.model],
                ...qualityRows(r.img1_quality, "quality 1"), ...qualityRows(r.img2_quality, "quality 2")];
  if (live) rows.push(["liveness", `${r.img1_is_real ? "real" : "spoof"} / ${r.img2_is_real ? "real" : "spoof"}`]);
  return [el("p", { className: `verdict ${r.verified ? "same" : "different"}` },
             r.verified ? "Same person" : "Different people"), facts(rows)];
});

section("analyze", async (photos, data) => {
  const live = data.get("anti_spoofing") === "true";
  const r = await api("POST", "/v1/face/analyze", form({
    img: photos.img.required("the photo"), anti_spoofing: live ? "true" : "" }));
  photos.img.draw(r.faces.map((f, i) => box(f.region, joined(`${i + 1}`, qualityLabel(f.quality)),
                                            f.is_real !== false && !f.quality?.reasons.length)));
  if (!r.faces.length) return [el("p", {}, "No face found.")];
  return r.faces.map((f, i) => {
    const rows = [["age", f.age === undefined ? "–" : Math.round(f.age)],
                  ["gender", f.dominant_gender ? `${f.dominant_gender} (${pct(f.gender[f.dominant_gender])})` : "–"],
                  ["face score", pct(f.face_confidence)], ...qualityRows(f.quality)];
    if (live) rows.push(["liveness", `${f.is_real ? "real" : "spoof"} (${pct(f.antispoof_score)})`]);
    return el("div", { className: "face" }, el("h3", {}, `Face ${i + 1}`), facts(rows));
  });
});

function parseLabels(text) {
  const labels = {};
  for (const line of text.split(/\n|,/).map((l) => l.trim()).filter(Boolean)) {
    const at = line.indexOf("=");
    if (at < 1) throw new ApiError(`labels: write one key=value per line, not "${line}"`);
    labels[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return labels;
}

section("register", async (photos, data) => {
  const labels = parseLabels(data.get("labels") || "");
  const r = await api("POST", "/v1/face/register", form({
    img: photos.img.required("the photo"), name: data.get("name"),
    labels: Object.keys(labels).length ? JSON.stringify(labels) : "" }));
  refreshLists();
  return [el("p", { className: "ok" }, `Registered ${r.name}`),
          facts([["id", r.id], ...qualityRows(r.quality?.[0])])];
});

section("identify", async (photos, data) => {
  const every = data.get("all_faces") === "true";
  const r = await api("POST", "/v1/face/identify", form({
    img: photos.img.required("the photo"), top_k: data.get("top_k"), all_faces: every ? "true" : "" }));
  if (every) return groupPhoto(photos.img, r.faces);
  const probe = facts(qualityRows(r.quality, "probe quality"));
  if (!r.matches.length) return [el("p", {}, "Nobody is registered for this model yet."), probe];
  const rows = r.matches.map((m, i) => el("tr", { className: m.match ? "match" : "" },
    el("td", {}, `${i + 1}`), el("td", { className: "name" }, m.name), el("td", {}, m.distance.toFixed(3)),
    el("td", {}, of100(m.confidence)), el("td", {}, m.match ? "match" : "no match")));
  return [el("table", { className: "matches" },
    el("thead", {}, el("tr", {}, ...["#", "Name", "Distance", "Confidence", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows)), probe];
});

// Every face of a group photo, its box labelled with the person given to it (or "unknown").
function groupPhoto(photo, faces) {
  photo.draw(faces.map((f) => box(f.facial_area, f.name ?? "unknown", f.match)));
  if (!faces.length) return [el("p", {}, "No face found.")];
  const rows = faces.map((f, i) => el("tr", { className: f.match ? "match" : "" },
    el("td", {}, `${i + 1}`), el("td", { className: "name" }, f.name ?? "unknown"),
    el("td", {}, f.distance === null ? "–" : f.distance.toFixed(3))));
  return [el("p", {}, `${faces.length} faces, ${faces.filter((f) => f.match).length} named`),
    el("table", { className: "matches" },
      el("thead", {}, el("tr", {}, ...["#", "Name", "Distance"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows))];
}

// A face cut out of its photo, for the clusters of "group these photos".
function faceThumb(image, area) {
  const canvas = el("canvas", { width: 72, height: 72, className: "thumb" });
  canvas.getContext("2d").drawImage(image, area.x, area.y, area.w, area.h, 0, 0, 72, 72);
  return canvas;
}

section("group", async (photos, data) => {
  const files = data.getAll("imgs").filter((f) => f.size);
  if (!files.length) throw new ApiError("choose the photos to group first");
  const body = form({});
  files.forEach((f) => body.append("imgs", f));
  const r = await api("POST", "/v1/face/cluster", body);
  const images = await Promise.all(files.map((f) => createImageBitmap(f)));
  const strip = (faces) => el("div", { className: "thumbs" },
    ...faces.map((f) => faceThumb(images[f.img], f.facial_area)));
  return [el("p", {}, `${r.clusters.length} people seen more than once, ${r.unclustered.length} faces seen once`),
    ...r.clusters.map((c, i) => el("div", { className: "cluster" },
      el("h3", {}, `Person ${i + 1}: ${c.faces.length} faces`), strip(c.faces))),
    ...(r.unclustered.length ? [el("div", { className: "cluster" }, el("h3", {}, "Seen once"),
      strip(r.unclustered))] : [])];
});

// A paged listing: list(query) answers {items, total}; row(item) makes its table row. Its
// search box (input name=name), when it has one, filters by name.
function listing(id, list, row, unit) {
  const root = document.getElementById(id);
  $(root, "table").after(el("div", { className: "pager" },
    el("button", { type: "button", className: "prev" }, "\u2190 Previous"), el("span", { className: "range" }),
    el("button", { type: "button", className: "next" }, "Next \u2192")));
  const view = {
    root, offset: 0,
    async refresh() {
      const result = $(root, ".result");
      const model = document.getElementById("model").value;
      const query = new URLSearchParams({ limit: PAGE_SIZE, offset: view.offset });
      if (model) query.set("model", model);
      const name = $(root, "input[name=name]").value.trim();
      if (name) query.set("name", name);
      try {
        const r = await list(query);
        if (!r.items.length && view.offset > 0) {
          view.offset = Math.max(0, view.offset - PAGE_SIZE);
          return view.refresh();
        }
        result.className = "result";
        result.textContent = "";
        $(root, ".count").textContent = `(${r.total})`;
        $(root, ".range").textContent = r.total
          ? `${view.offset + 1}–${view.offset + r.items.length} of ${r.total} ${unit}`
          : (name ? `nobody named ${name}` : "nobody yet");
        $(root, ".prev").disabled = view.offset === 0;
        $(root, ".next").disabled = view.offset + r.items.length >= r.total;
        $(root, "tbody").replaceChildren(...r.items.map(row));
      } catch (err) {
        view.failed(err);
      }
    },
    failed(err) {
      $(root, ".result").className = "result error";
      $(root, ".result").textContent = err.message;
    },
    async act(work) {  // a change, then both listings again (a person's photos are rows of each)
      try {
        await work();
        await refreshLists();
      } catch (err) {
        view.failed(err);
      }
    },
  };
  $(root, ".prev").addEventListener("click", () => { view.offset -= PAGE_SIZE; view.refresh(); });
  $(root, ".next").addEventListener("click", () => { view.offset += PAGE_SIZE; view.refresh(); });
  return view;
}

const labelText = (labels) => Object.entries(labels).map(([k, v]) => `${k}=${v}`).join(", ");

const registry = listing("registry", (query) => api("GET", `/v1/face/registry?${query}`), (item) =>
  el("tr", {},
    el("td", { className: "name" }, item.name),
    el("td", {}, labelText(item.labels)),
    el("td", { title: item.registered_at }, item.registered_at.slice(0, 16).replace("T", " ")),
    el("td", {}, el("button", { type: "button", className: "forget", textContent: "Forget",
                                onclick: () => forgetPhoto(item) }))),
  "photos");

function forgetPhoto(item) {
  // Forgetting cannot be undone: the face is gone from the registry.
  if (!window.confirm(`Forget ${item.name}, registered ${item.registered_at.slice(0, 10)}? `
                      + "This cannot be undone.")) return;
  registry.act(() => api("POST", "/v1/face/forget", { id: item.id }));
}
$(registry.root, "form.search").addEventListener("submit", (event) => {
  event.preventDefault();
  registry.offset = 0;
  registry.refresh();
});

const peopleRoot = document.getElementById("people");
const people = listing("people", (query) => api("GET", `/v1/face/people?${query}`), (person) => {
  const forget = el("button", { type: "button", className: "forget", textContent: "Forget" });
  const cancel = el("button", { type: "button", className: "cancel", textContent: "Cancel", hidden: true });
  forget.onclick = () => {  // a first click asks; only the second forgets
    if (!forget.classList.contains("confirm")) {
      forget.classList.add("confirm");
      forget.textContent = `Forget ${person.name} and ${person.faces} photo${person.faces === 1 ? "" : "s"}?`;
      cancel.hidden = false;
      return;
    }
    people.act(() => api("DELETE", `/v1/face/people/${encodeURIComponent(person.person_id)}`));
  };
  cancel.onclick = () => {
    forget.classList.remove("confirm");
    forget.textContent = "Forget";
    cancel.hidden = true;
  };
  const add = el("button", { type: "button", className: "add", textContent: "Add photos",
                             onclick: () => addPhotosTo(person) });
  return el("tr", {},
    el("td", {}, el("input", { type: "checkbox", className: "pick", value: person.person_id,
                               onchange: pickedChanged })),
    el("td", { className: "name" }, person.name),
    el("td", { className: "faces" }, String(person.faces)),
    el("td", {}, labelText(person.labels)),
    el("td", {}, add, " ", forget, " ", cancel));
}, "people");

function picked() {  // in the order they were ticked: the first is the one kept
  return [...peopleRoot.querySelectorAll("input.pick:checked")]
    .sort((a, b) => a.dataset.at - b.dataset.at).map((box) => box.value);
}

function pickedChanged(event) {
  event.target.dataset.at = performance.now();
  $(peopleRoot, "button.merge").disabled = picked().length < 2;
}

function addPhotosTo(person) {
  const input = $(peopleRoot, "input.add-photos");
  input.value = "";
  input.onchange = () => people.act(async () => {
    const data = form({ person_id: person.person_id });
    for (const file of input.files) data.append("imgs", file);
    await api("POST", "/v1/face/register", data);
  });
  input.click();
}

$(peopleRoot, "button.merge").addEventListener("click", () => people.act(async () => {
  const [into, ...from] = picked();
  await api("POST", "/v1/face/people/merge", { into, from });
  $(peopleRoot, "button.merge").disabled = true;
}));
$(peopleRoot, "input[name=name]").addEventListener("input", () => { people.offset = 0; people.refresh(); });
$(peopleRoot, "form.search").addEventListener("submit", (event) => event.preventDefault());

function refreshLists() {
  return Promise.all([registry.refresh(), people.refresh()]);
}

async function loadModels() {
  const select = document.getElementById("model");
  try {
    const r = await api("GET", "/v1/models");
    select.replaceChildren(el("option", { value: "" }, "(default)"),
      ...r.data.map((m) => el("option", { value: m.id }, m.id)));
    if (r.data.length === 1) select.value = r.data[0].id;
  } catch (err) {
    const banner = document.getElementById("banner");
    banner.textContent = `could not list the models: ${err.message}`;
    banner.hidden = false;
  }
}

document.getElementById("model").addEventListener("change", () => {
  registry.offset = people.offset = 0;
  refreshLists();
});
document.getElementById("key-button").addEventListener("click", () => askKey("The key is kept in this browser and sent as x-api-key."));
loadModels().then(refreshLists);
