// Demo upload form: sends the file to POST /upload (with a Bearer token once the server asks for
// one), shows the upload's progress, then the returned <picture>, its HTML, and the pre-rendering
// job's progress from GET /jobs/<id>. Without this script the form still posts and the JSON is shown.
// The drop zone is the native file input stretched over a label: dropping a file on it is the
// browser's own behaviour; this script only names the chosen file and highlights the zone.
const form = document.getElementById("upload-form");
const zone = form?.querySelector(".drop");
const chosen = document.getElementById("upload-file");
const result = document.getElementById("upload-result");
const tokenRow = document.getElementById("upload-token-row");
const tokenInput = document.getElementById("upload-token");
const POLL_MS = 250;

function line(text) {
  const p = document.createElement("p");
  p.textContent = text;
  return p;
}

function progressBar(label) {
  const wrap = document.createElement("p");
  const bar = document.createElement("progress");
  bar.max = 1;
  bar.value = 0;
  const text = document.createElement("span");
  text.textContent = ` ${label}`;
  wrap.append(bar, text);
  return { wrap, bar, text };
}

function send(file, onProgress) {
  // XMLHttpRequest, not fetch: only it reports upload progress
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/upload");
    xhr.setRequestHeader("Accept", "application/json");
    if (tokenInput && tokenInput.value) xhr.setRequestHeader("Authorization", `Bearer ${tokenInput.value}`);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* plain-text error */ }
      resolve({ status: xhr.status, body, text: xhr.responseText });
    };
    xhr.onerror = () => reject(new Error("network error"));
    const data = new FormData();
    data.append("image", file);
    xhr.send(data);
  });
}

async function follow(statusUrl, view) {
  for (;;) {
    const job = await (await fetch(statusUrl, { headers: { Accept: "application/json" } })).json();
    view.bar.max = Math.max(job.total, 1);
    view.bar.value = job.done;
    view.text.textContent = ` pre-rendering presets: ${job.done}/${job.total} ${job.status}`;
    if (job.status === "done") return;
    if (job.status === "failed") {
      view.text.textContent += `: ${job.error}`;
      return;
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

if (zone && chosen) {
  const input = form.elements.image;
  input.addEventListener("change", () => {
    const file = input.files[0];
    chosen.textContent = file ? `${file.name} (${Math.ceil(file.size / 1000)} kB)` : chosen.dataset.empty;
  });
  chosen.dataset.empty = chosen.textContent;
  for (const type of ["dragenter", "dragover"]) input.addEventListener(type, () => zone.classList.add("over"));
  for (const type of ["dragleave", "drop"]) input.addEventListener(type, () => zone.classList.remove("over"));
}

if (form && result) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = form.elements.image.files[0];
    if (!file) return;
    result.replaceChildren();
    const upload = progressBar(`uploading ${file.name}`);
    result.append(upload.wrap);
    let answer;
    try {
      answer = await send(file, (fraction) => { upload.bar.value = fraction; });
    } catch (err) {
      result.replaceChildren(line(`Upload failed: ${err.message}`));
      return;
    }
    if (answer.status === 401 && tokenRow) {
      tokenRow.hidden = false;
      tokenInput.focus();
    }
    if (answer.status !== 201) {
      const message = answer.body ? answer.body.error : answer.text;
      result.replaceChildren(line(`Upload refused (${answer.status}): ${message}`));
      return;
    }
    const body = answer.body;
    const job = progressBar("pre-rendering presets");
    const figure = document.createElement("figure");
    figure.innerHTML = body.picture_html; // built and escaped by the server's picture_tag()
    const caption = document.createElement("figcaption");
    caption.textContent = `${body.path} (${body.width}\u00d7${body.height} ${body.format}, ${body.bytes} bytes)`;
    figure.append(caption);
    const snippet = document.createElement("pre");
    snippet.className = "snippet";
    snippet.append(document.createElement("code"));
    snippet.firstChild.textContent = body.picture_html;
    result.replaceChildren(job.wrap, figure, line("The HTML to put on your page:"), snippet);
    await follow(body.job.status_url, job);
  });
}
