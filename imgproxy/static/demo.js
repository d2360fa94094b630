// Demo page: fills in the lead photo's figures. Phone and desktop: the real size of the
// <picture> candidate each takes (a HEAD request: headers only, no image bytes). This browser:
// what it really loaded for the photo, from resource timing. Without this script the original's
// size still shows and the rest reads "…".
const facts = document.querySelector(".facts");
const hero = document.getElementById("hero-img");

/** 1234567 -> "1.23 MB": decimal units, as pages.human_bytes writes them. */
export function humanBytes(count) {
  for (const [unit, size] of [["MB", 1e6], ["kB", 1e3]]) {
    if (count >= size) return `${count >= 100 * size ? Math.round(count / size) : Number((count / size).toPrecision(3))} ${unit}`;
  }
  return `${count} B`;
}

function show(row, bytes, original) {
  const cell = row.querySelector(".bytes");
  cell.textContent = humanBytes(bytes);
  cell.dataset.bytes = String(bytes);
  row.querySelector("meter").value = bytes;
  const share = (100 * bytes) / original;
  row.querySelector(".share").textContent = share < 1 ? `${share.toFixed(1)} %` : `${Math.round(share)} %`;
}

/** The candidate the browser took: its format and pixel width (the helpers write the real output
 * width as its `w` descriptor; naturalWidth would be scaled by the candidate's density). */
function taken(img) {
  const url = new URL(img.currentSrc).href;
  for (const element of [...img.parentElement.querySelectorAll("source"), img]) {
    for (const candidate of (element.srcset || "").split(",")) {
      const [src, descriptor = ""] = candidate.trim().split(/\s+/);
      if (src && new URL(src, location.href).href === url) {
        const format = element.type ? element.type.replace("image/", "") : "the original's format";
        return { format: format.toUpperCase(), width: parseInt(descriptor, 10) || img.naturalWidth };
      }
    }
  }
  return { format: "", width: img.naturalWidth };
}

function loaded(img) {
  return img.complete && img.naturalWidth
    ? Promise.resolve()
    : new Promise((resolve) => img.addEventListener("load", resolve, { once: true }));
}

async function fillDevices(original) {
  await Promise.all([...facts.querySelectorAll(".fact.device")].map(async (row) => {
    const answer = await fetch(row.dataset.url, { method: "HEAD" });
    const length = Number(answer.headers.get("content-length"));
    if (answer.ok && length) show(row, length, original);
  }));
}

async function fillMine(original) {
  const row = document.getElementById("this-browser");
  row.querySelector(".screen").textContent = `${innerWidth} px, ${devicePixelRatio}\u00d7`;
  await loaded(hero);
  const entry = performance.getEntriesByName(hero.currentSrc, "resource")[0];
  const { format, width } = taken(hero);
  const height = Math.round((width * hero.getAttribute("height")) / hero.getAttribute("width"));
  row.querySelector(".what").textContent = `${width}\u00d7${height} ${format}`;
  if (entry && entry.encodedBodySize) show(row, entry.encodedBodySize, original);
}

if (facts && hero) {
  const original = Number(facts.dataset.originalBytes);
  fillDevices(original);
  fillMine(original);
}
