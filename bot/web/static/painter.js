// The mask painter: strokes go on a canvas at the picture's own size; painted pixels (any alpha) are "repaint".
"use strict";
(function () {
  const stage = document.getElementById("stage");
  const picture = document.getElementById("picture");
  const canvas = document.getElementById("mask");
  const status = document.getElementById("status");
  const size = document.getElementById("size");
  const ctx = canvas.getContext("2d");
  const history = [];
  const HISTORY = 20;
  let erasing = false;
  let last = null;

  function setTool(erase) {
    erasing = erase;
    for (const [id, on] of [["brush", !erase], ["eraser", erase]]) {
      const button = document.getElementById(id);
      button.classList.toggle("on", on);
      button.setAttribute("aria-pressed", String(on));
    }
  }

  function snapshot() {
    history.push(ctx.getImageData(0, 0, canvas.width, canvas.height));
    if (history.length > HISTORY) history.shift();
  }

  function point(event) {
    const box = canvas.getBoundingClientRect();
    return { x: (event.clientX - box.left) * canvas.width / box.width,
             y: (event.clientY - box.top) * canvas.height / box.height };
  }

  function stroke(from, to) {
    const scale = canvas.width / canvas.getBoundingClientRect().width;
    ctx.globalCompositeOperation = erasing ? "destination-out" : "source-over";
    ctx.strokeStyle = ctx.fillStyle = "rgb(255, 0, 0)";
    ctx.lineWidth = Number(size.value) * scale;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
  }

  function setup() {
    canvas.width = picture.naturalWidth;
    canvas.height = picture.naturalHeight;
  }
  if (picture.complete && picture.naturalWidth) setup(); else picture.addEventListener("load", setup);

  canvas.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    snapshot();
    last = point(event);
    stroke(last, last);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (last === null) return;
    const next = point(event);
    stroke(last, next);
    last = next;
  });
  for (const name of ["pointerup", "pointercancel"]) canvas.addEventListener(name, () => { last = null; });

  document.getElementById("brush").addEventListener("click", () => setTool(false));
  document.getElementById("eraser").addEventListener("click", () => setTool(true));
  document.getElementById("undo").addEventListener("click", () => {
    const previous = history.pop();
    if (previous) ctx.putImageData(previous, 0, 0);
  });
  document.getElementById("clear").addEventListener("click", () => {
    snapshot();
    ctx.clearRect(0, 0, canvas.width, canvas.height);
  });
  document.getElementById("invert").addEventListener("click", () => {
    snapshot();
    const data = ctx.getImageData(0, 0, canvas.width, canvas.height);
    const px = data.data;
    for (let i = 0; i < px.length; i += 4) {
      const painted = px[i + 3] > 0;
      px[i] = 255; px[i + 1] = 0; px[i + 2] = 0; px[i + 3] = painted ? 0 : 255;
    }
    ctx.putImageData(data, 0, 0);
  });
  document.getElementById("view").addEventListener("click", (event) => {
    const on = stage.classList.toggle("maskview");
    event.currentTarget.classList.toggle("on", on);
    event.currentTarget.setAttribute("aria-pressed", String(on));
  });

  // The mask the bot expects: white = repaint, black = keep, at the picture's size.
  function maskBlob() {
    const out = document.createElement("canvas");
    out.width = canvas.width;
    out.height = canvas.height;
    const octx = out.getContext("2d");
    const source = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    const image = octx.createImageData(out.width, out.height);
    for (let i = 0; i < source.length; i += 4) {
      const v = source[i + 3] > 0 ? 255 : 0;
      image.data[i] = image.data[i + 1] = image.data[i + 2] = v;
      image.data[i + 3] = 255;
    }
    octx.putImageData(image, 0, 0);
    return new Promise((resolve) => out.toBlob(resolve, "image/png"));
  }

  document.getElementById("send").addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = document.getElementById("fill");
    button.disabled = true;
    status.textContent = "Sending…";
    try {
      const form = new FormData();
      form.append("prompt", document.getElementById("prompt").value);
      form.append("mask", await maskBlob(), "mask.png");
      const answer = await fetch(window.location.pathname, { method: "POST", body: form });
      const page = new DOMParser().parseFromString(await answer.text(), "text/html");
      const message = page.getElementById("message");
      status.textContent = message ? message.textContent : "The bot answered " + answer.status + ".";
      if (answer.ok) document.getElementById("painter").classList.add("sent");
      else button.disabled = false;
    } catch (error) {
      status.textContent = "Could not reach the bot: " + error;
      button.disabled = false;
    }
  });
})();
