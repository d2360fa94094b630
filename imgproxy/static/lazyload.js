/*
 * lazyload.js — viewport-sized images from imgproxy, loaded when they come near the viewport.
 * A dependency-free ES module; no build step.
 *
 *   <script type="module" src="/static/lazyload.js" data-widths="160 320 640 1280 1920"></script>
 *   <img data-src="/picture/photos/a.jpg" alt="A harbour" width="1200" height="800">
 *   <noscript><img src="/picture/photos/a.jpg?scalex=640" alt="A harbour"></noscript>
 *
 * - The image gets src = data-src + scalex=W (+ encoding=auto unless an encoding is given), where
 *   W = rendered CSS width × pixel ratio rounded UP to the width steps, where the pixel ratio is
 *   devicePixelRatio rounded up to 1, 1.5, 2 or 3 (the dpr values the server takes unsigned, so
 *   a zoomed or odd screen asks for the same few variants as the others). The steps come from
 *   the script tag's data-widths or <meta name="imgproxy-widths" content="…">; use the server's
 *   [security] allowed_widths so the requests need no signature and share cache entries (with a
 *   key and no allowed_widths, unsigned lazyloader requests are refused).
 * - Other query parameters of data-src are kept exactly as written, except `sig`: a signature
 *   cannot cover the added width, so with a signing key data-src should carry no other parameters
 *   (the server accepts width + encoding=auto + dpr unsigned only).
 * - Loads when within data-root-margin (default 200px) of the viewport; when the element grows
 *   (ResizeObserver) or the pixel ratio rises, it upgrades to a larger step — never downgrades.
 * - width/height attributes on the <img> reserve its space before it loads (no layout shift).
 * - data-lqip on an <img>: a tiny blurred preview is shown until the real image arrives
 *   (data-lqip="" builds ?scalex=32&blur=…; a URL value is used as is, e.g. a signed one).
 *   The preview carries the class "lqip" so the page's CSS can style it.
 * - data-srcset instead of data-src (on the <img> and on its <picture>'s <source>s): moved to
 *   srcset when the image comes near the viewport; the browser picks the candidate, as usual.
 * - data-placeholder on an <img> whose src is an inline data: image (imgproxy.html's
 *   placeholder=True writes the source's ThumbHash so, with data-srcset): it stays shown until the
 *   real image has loaded, then the real image fades in over it. The fade is in
 *   /static/placeholder.css (link it; without it the swap is instant); with prefers-reduced-motion
 *   there is no fade.
 * - No JavaScript: the <noscript> sibling above shows a fixed-size image instead.
 * - Images added to the page later are picked up automatically; observe(element) does it by hand.
 */

const WIDTH_NAMES = ["scalex", "width", "w"];
const REPLACED_NAMES = [...WIDTH_NAMES, "sig"]; // a signature no longer fits once the width changes
const ENCODING_NAMES = ["encoding", "format", "fm"];
const LQIP_WIDTH = 32;
const LQIP_BLUR = 2;
const PIXEL_RATIOS = [1, 1.5, 2, 3];

/** devicePixelRatio rounded up to PIXEL_RATIOS (the largest beyond them). */
export function pixelRatio(ratio = window.devicePixelRatio || 1) {
  return PIXEL_RATIOS.find((r) => r >= ratio - 0.001) ?? PIXEL_RATIOS[PIXEL_RATIOS.length - 1];
}

const script = [...document.querySelectorAll("script[src]")].find((s) => s.src === import.meta.url)
  || document.querySelector("script[data-widths]");
const meta = document.querySelector('meta[name="imgproxy-widths"]');
const steps = (script?.dataset.widths || meta?.content || "")
  .split(/[\s,]+/).map(Number).filter((n) => Number.isInteger(n) && n > 0).sort((a, b) => a - b);
const rootMargin = script?.dataset.rootMargin || "200px";

// per image: requested = largest width asked for; near = has come near the viewport;
// exhausted = the server answered narrower than asked (the source is that small): stop upgrading;
// lqip = the preview's (or inline placeholder's) URL until it has loaded or failed; placeholder =
// the inline placeholder until the first real image has loaded
const state = new WeakMap();
const reducedMotion = matchMedia("(prefers-reduced-motion: reduce)");

function paramName(pair) {
  try {
    return decodeURIComponent(pair.split("=")[0].replace(/\+/g, " "));
  } catch {
    return pair;
  }
}

/** data-src with its width replaced by `width` and its `sig` dropped; the rest kept as written. */
export function sizedUrl(src, width, extra = []) {
  const [base, query = ""] = src.split("#")[0].split(/\?(.*)/s);
  const pairs = query.split("&").filter((p) => p && !REPLACED_NAMES.includes(paramName(p)));
  pairs.push(`scalex=${width}`, ...extra);
  if (!pairs.some((p) => ENCODING_NAMES.includes(paramName(p)))) pairs.push("encoding=auto");
  return `${base}?${pairs.join("&")}`;
}

/** The tiny blurred preview shown until the real image arrives (data-lqip=""). */
export function placeholderUrl(src) {
  return sizedUrl(src, LQIP_WIDTH, [`blur=${LQIP_BLUR}`]);
}

/** The smallest step that covers `pixels`; the largest step beyond them; exact without steps. */
export function stepFor(pixels) {
  const wanted = Math.max(1, Math.ceil(pixels));
  if (!steps.length) return wanted;
  return steps.find((w) => w >= wanted) ?? steps[steps.length - 1];
}

function update(img) {
  const s = state.get(img);
  // the preview first: once it is displayed, the real image loads behind it and replaces it
  if (!s || !s.near || s.exhausted || s.lqip) return;
  if (!img.dataset.src) return reveal(img);
  const cssWidth = img.getBoundingClientRect().width;
  if (!cssWidth) return; // not laid out (display: none): wait for the ResizeObserver
  const width = stepFor(cssWidth * pixelRatio());
  if (width <= s.requested) return;
  s.requested = width;
  img.src = sizedUrl(img.dataset.src, width);
}

/** A data-srcset image near the viewport: its candidates (and its <picture>'s) go live. */
function reveal(img) {
  if (img.getAttribute("srcset") === img.dataset.srcset) return;
  if (img.parentElement?.tagName === "PICTURE") {
    img.parentElement.querySelectorAll("source[data-srcset]").forEach((source) => {
      source.srcset = source.dataset.srcset;
    });
  }
  img.srcset = img.dataset.srcset;
}

function settled(event) {
  const img = event.currentTarget;
  const s = state.get(img);
  if (s.lqip) {
    if (img.currentSrc !== s.lqip) return;
    s.lqip = null; // preview (or placeholder) shown, or failed: go for the real image
  } else if (s.placeholder && (!img.currentSrc || img.currentSrc === s.placeholder)) {
    // the inline placeholder's own late event: the real image is still on its way (while it is,
    // Chromium reports currentSrc "" though it keeps painting the placeholder)
    return;
  } else {
    if (event.type === "load") {
      img.classList.remove("lqip");
      s.exhausted = img.naturalWidth < s.requested;
      if (s.placeholder) fadeIn(img, s.placeholder);
    }
    s.placeholder = null;
  }
  update(img);
}

/**
 * The image has just replaced its inline placeholder: lay a copy of the placeholder over it and fade
 * that out, which shows the image fading in over it (an <img> cannot fade its content over its own
 * background). The copy is placed through the CSSOM, which the pages' CSP (style-src 'self')
 * allows, unlike style attributes; it is absolutely positioned, so nothing around it moves.
 */
function fadeIn(img, placeholder) {
  if (reducedMotion.matches) return;
  const cover = Object.assign(document.createElement("img"), { src: placeholder, alt: "", className: "imgproxy-cover" });
  cover.setAttribute("aria-hidden", "true");
  const { objectFit, objectPosition } = getComputedStyle(img);
  Object.assign(cover.style, {
    position: "absolute", left: "0px", top: "0px", margin: "0", padding: "0", border: "0",
    maxWidth: "none", maxHeight: "none", pointerEvents: "none", objectFit, objectPosition,
  });
  img.after(cover); // after, not before: rules such as img:first-child keep matching the image
  const to = img.getBoundingClientRect();
  const from = cover.getBoundingClientRect();
  Object.assign(cover.style, {
    left: `${to.left - from.left}px`, top: `${to.top - from.top}px`, width: `${to.width}px`, height: `${to.height}px`,
  });
  const done = () => cover.remove();
  cover.addEventListener("transitionend", done);
  cover.addEventListener("transitioncancel", done);
  cover.getBoundingClientRect(); // style it opaque first, so adding the class starts the transition
  cover.classList.add("imgproxy-faded");
  if (!parseFloat(getComputedStyle(cover).transitionDuration)) done(); // placeholder.css not linked
}

const nearby = "IntersectionObserver" in window
  ? new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      nearby.unobserve(entry.target);
      state.get(entry.target).near = true;
      update(entry.target);
    }
  }, { rootMargin })
  : null;
const resized = "ResizeObserver" in window
  ? new ResizeObserver((entries) => entries.forEach((entry) => update(entry.target)))
  : null;

function register(img) {
  if (state.has(img) || !(img.dataset.src || img.dataset.srcset)) return;
  const s = { requested: 0, near: !nearby, exhausted: false, lqip: null, placeholder: null };
  state.set(img, s);
  img.addEventListener("load", settled);
  img.addEventListener("error", settled);
  if (img.hasAttribute("data-placeholder") && img.src.startsWith("data:")) {
    s.placeholder = img.src;
    // a new src before the placeholder is decoded would replace it, not load behind it: wait for it
    if (!(img.complete && img.naturalWidth)) s.lqip = img.src;
  } else if (img.hasAttribute("data-lqip") && (img.dataset.lqip || img.dataset.src)) {
    s.lqip = new URL(img.dataset.lqip || placeholderUrl(img.dataset.src), document.baseURI).href;
    img.classList.add("lqip");
    img.src = s.lqip;
  }
  nearby?.observe(img);
  resized?.observe(img);
  update(img);
}

/** Start handling every img[data-src] and img[data-srcset] inside `root` (the page does this for itself). */
export function observe(root = document) {
  if (root instanceof HTMLImageElement) register(root);
  root.querySelectorAll?.("img[data-src], img[data-srcset]").forEach(register);
}

function watchPixelRatio() {
  // zooming or moving to another screen changes the ratio: bigger needs may follow
  matchMedia(`(resolution: ${window.devicePixelRatio}dppx)`).addEventListener("change", () => {
    document.querySelectorAll("img[data-src]").forEach(update);
    watchPixelRatio();
  }, { once: true });
}

observe();
watchPixelRatio();
new MutationObserver((records) => {
  for (const record of records) record.addedNodes.forEach(observe);
}).observe(document.documentElement, { childList: true, subtree: true });
