function (script, id) {
  var root = script && script.parentNode;
  if (!root || !root.classList || !root.classList.contains("sagan-explorer")) {
    root = document.getElementById(id);
  }
  var readout = root.querySelector(".sagan-explorer-readout");
  try {
    var data = JSON.parse(root.querySelector(".sagan-explorer-data").textContent);
    var S = data.size, Z = data.zoom, CH = data.channels;
    var bytes = function (b64) {
      var s = atob(b64), a = new Uint8Array(s.length);
      for (var i = 0; i < s.length; i++) a[i] = s.charCodeAt(i);
      return a;
    };
    var image = bytes(data.image), cmap = [], hex = "%VIRIDIS%";
    for (var i = 0; i < hex.length; i += 6) {
      cmap.push([0, 2, 4].map(function (k) { return parseInt(hex.substr(i + k, 2), 16); }));
    }
    var colour = function (t) {
      var x = Math.min(Math.max(t, 0), 1) * (cmap.length - 1);
      var k = Math.min(Math.floor(x), cmap.length - 2), f = x - k;
      return [0, 1, 2].map(function (c) { return cmap[k][c] * (1 - f) + cmap[k + 1][c] * f; });
    };
    var grey = function (p) {
      if (CH === 1) return [image[p], image[p], image[p]];
      return [image[3 * p], image[3 * p + 1], image[3 * p + 2]];
    };
    var layers = data.layers.map(function (L) {
      return {name: L.name, h: L.height, w: L.width, gamma: L.gamma, branch: L.branch,
              q: bytes(L.map), scale: new Float32Array(bytes(L.scale).buffer),
              n: L.height * L.width};
    });
    var imgCanvas = root.querySelector(".sagan-explorer-image");
    var maps = root.querySelectorAll(".sagan-explorer-map");
    root.querySelectorAll(".sagan-explorer-bar").forEach(function (bar) {
      var ctx = bar.getContext("2d");
      for (var x = 0; x < bar.width; x++) {
        var c = colour(x / (bar.width - 1));
        ctx.fillStyle = "rgb(" + c.map(Math.round).join(",") + ")";
        ctx.fillRect(x, 0, 1, bar.height);
      }
    });
    var paint = function (canvas, rgbAt) {
      var ctx = canvas.getContext("2d"), img = ctx.createImageData(S * Z, S * Z);
      for (var y = 0; y < S * Z; y++) {
        for (var x = 0; x < S * Z; x++) {
          var c = rgbAt(Math.floor(y / Z), Math.floor(x / Z)), o = 4 * (y * S * Z + x);
          img.data[o] = c[0]; img.data[o + 1] = c[1]; img.data[o + 2] = c[2]; img.data[o + 3] = 255;
        }
      }
      ctx.putImageData(img, 0, 0);
      return ctx;
    };
    var box = function (ctx, x, y, w, h) {
      ctx.lineWidth = 1; ctx.strokeStyle = "#ffffff";
      ctx.strokeRect(x - 2.5, y - 2.5, w + 5, h + 5);
      ctx.lineWidth = 2; ctx.strokeStyle = "#e4002b";
      ctx.strokeRect(x - 1, y - 1, w + 2, h + 2);
    };
    var fmt = function (v) {
      return v === null ? "undefined (x_i = 0)" : Number(v).toPrecision(3);
    };
    var state = {r: data.start[0], c: data.start[1], pinned: false};
    var draw = function () {
      var r = state.r, c = state.c;
      root.setAttribute("data-query", r + "," + c);
      box(paint(imgCanvas, function (y, x) { return grey(y * S + x); }), c * Z, r * Z, Z, Z);
      readout.textContent = "";
      var head = document.createElement("div");
      head.textContent = "Pixel (" + r + ", " + c + ") (row, column) of the " + S + "×" + S +
        " digit" + (state.pinned ? " (pinned)" : "") + ":";
      var list = document.createElement("ul");
      readout.appendChild(head); readout.appendChild(list);
      layers.forEach(function (L, k) {
        var fr = S / L.h, fc = S / L.w, pr = Math.floor(r / fr), pc = Math.floor(c / fc);
        var i = pr * L.w + pc, row = new Float32Array(L.n), best = 0;
        for (var j = 0; j < L.n; j++) {
          row[j] = L.q[i * L.n + j] / 255 * L.scale[i];
          if (row[j] > row[best]) best = j;
        }
        var peak = L.scale[i];
        var ctx = paint(maps[k], function (y, x) {
          var h = colour(row[Math.floor(y / fr) * L.w + Math.floor(x / fc)] / peak);
          var g = grey(y * S + x);
          return [0, 1, 2].map(function (m) { return Math.round(0.7 * h[m] + 0.3 * g[m]); });
        });
        box(ctx, pc * fc * Z, pr * fr * Z, fc * Z, fr * Z);
        maps[k].parentNode.querySelector(".sagan-explorer-max").textContent = "max " + fmt(peak);
        var where = "(" + Math.floor(best / L.w) + ", " + best % L.w + ")";
        maps[k].setAttribute("aria-label", L.name + ": from query position (" + pr + ", " + pc +
          ") the strongest weight is at " + where);
        var b = L.branch[i], li = document.createElement("li");
        li.setAttribute("data-layer", L.name);
        li.setAttribute("data-position", pr + "," + pc);
        li.setAttribute("data-gamma", String(L.gamma));
        li.setAttribute("data-branch", b === null ? "" : String(b));
        li.textContent = L.name + " (" + L.h + "×" + L.w + " map): query position (" + pr + ", " +
          pc + "); gamma = " + fmt(L.gamma) + "; branch size = " + fmt(b) +
          " (‖gamma·o_i‖ / ‖x_i‖); strongest weight " + fmt(row[best]) + " at " + where +
          ", uniform " + fmt(1 / L.n) + ".";
        list.appendChild(li);
      });
    };
    var select = function (r, c, pin) {
      r = Math.min(Math.max(r, 0), S - 1); c = Math.min(Math.max(c, 0), S - 1);
      if (pin === true) state.pinned = true;
      if (r === state.r && c === state.c && pin === undefined) return;
      state.r = r; state.c = c; draw();
    };
    var at = function (e) {
      var rect = imgCanvas.getBoundingClientRect();
      return [Math.floor((e.clientY - rect.top) / rect.height * S),
              Math.floor((e.clientX - rect.left) / rect.width * S)];
    };
    imgCanvas.addEventListener("pointermove", function (e) {
      var p = at(e);
      if (e.buttons & 1) select(p[0], p[1], true);
      else if (!state.pinned) select(p[0], p[1]);
    });
    imgCanvas.addEventListener("click", function (e) { select(at(e)[0], at(e)[1], true); });
    imgCanvas.addEventListener("keydown", function (e) {
      var step = e.shiftKey ? 4 : 1, moves = {ArrowUp: [-step, 0], ArrowDown: [step, 0],
        ArrowLeft: [0, -step], ArrowRight: [0, step]};
      if (moves[e.key]) {
        e.preventDefault();
        select(state.r + moves[e.key][0], state.c + moves[e.key][1], true);
      } else if (e.key === "Escape" && state.pinned) {
        state.pinned = false; draw();
      }
    });
    draw();
    root.setAttribute("data-ready", "1");
  } catch (err) {
    root.setAttribute("data-ready", "error");
    readout.textContent = "The attention explorer could not start: " + err;
    throw err;
  }
}
