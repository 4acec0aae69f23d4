// The browser side of MPush's WebSocket variant (spec 15): JSON text frames,
// a key-less handshake, bind, and pushes acked as their flags ask.
"use strict";

(function () {
  const CMD = { HANDSHAKE: 2, BIND: 5, UNBIND: 6, ERROR: 10, OK: 11, KICK: 13, PUSH: 15, ACK: 23 };
  const FLAG = { BIZ_ACK: 4, AUTO_ACK: 8, JSON_BODY: 16 };
  const MAX_SHOWN = 200;          // pushes and events kept on the page
  const MAX_BACKOFF_MS = 30000;

  const el = (id) => document.getElementById(id);
  let socket = null;
  let nextId = 1;
  let handshaken = false;
  let boundUser = null;
  let bindingUser = null;
  let kicked = false;
  let kickedUser = null;
  // The server's close code after an operator's kick (websocket.py KICKED_CLOSE_CODE).
  const KICKED_CLOSE = 4001;
  let stopped = false;            // by the user, or after a refused handshake
  let backoff = 1000;
  let retryTimer = null;

  function setState(state, text) {
    document.body.dataset.state = state;
    el("state").textContent = text;
  }

  function addItem(list, node) {
    list.prepend(node);
    while (list.children.length > MAX_SHOWN) {
      list.lastElementChild.remove();
    }
  }

  function event(text) {
    const item = document.createElement("li");
    item.textContent = new Date().toLocaleTimeString() + "  " + text;
    addItem(el("events"), item);
  }

  function deviceId() {
    // One per tab: two tabs of one user must not look like one device.
    const key = "mpush.deviceId";
    let id = null;
    try { id = sessionStorage.getItem(key); } catch (e) { /* storage off */ }
    if (!id) {
      const bytes = new Uint8Array(8);
      crypto.getRandomValues(bytes);
      id = "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
      try { sessionStorage.setItem(key, id); } catch (e) { /* storage off */ }
    }
    return id;
  }

  function send(cmd, body, sessionId, flags) {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      return false;
    }
    const packet = { cmd: cmd, flags: flags || FLAG.JSON_BODY, sessionId: sessionId || nextId++, body: body };
    socket.send(JSON.stringify(packet));
    return true;
  }

  function wantedUser() {
    return el("user").value.trim();
  }

  function bind() {
    const user = wantedUser();
    if (!user) {
      event("type a user id to bind");
      return;
    }
    if (!handshaken) {
      event("not connected yet; " + user + " is bound once the handshake is done");
      return;
    }
    kicked = false;
    bindingUser = user;
    setState("binding", "binding " + user + "…");
    send(CMD.BIND, { userId: user });
  }

  function unbind() {
    if (handshaken && boundUser) {
      send(CMD.UNBIND, { userId: boundUser });
    }
  }

  function showPush(packet) {
    const item = document.createElement("li");
    const content = document.createElement("div");
    content.className = "content";
    content.textContent = (packet.body && typeof packet.body.content === "string") ? packet.body.content : "";
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = new Date().toLocaleTimeString() + " · message " + packet.sessionId;
    item.append(content, meta);
    addItem(el("pushes"), item);
    el("no-pushes").hidden = true;
  }

  function onPush(packet) {
    const flags = packet.flags || 0;
    // As the SDKs do: AUTO_ACK on receipt; BIZ_ACK once the page has it shown.
    if (flags & FLAG.AUTO_ACK) {
      send(CMD.ACK, null, packet.sessionId);
    }
    showPush(packet);
    if ((flags & FLAG.BIZ_ACK) && !(flags & FLAG.AUTO_ACK)) {
      send(CMD.ACK, null, packet.sessionId);
    }
  }

  function onOk(body) {
    if (body.cmd === CMD.BIND) {
      boundUser = bindingUser;
      setState("bound", "bound as " + boundUser);
      event("bound as " + boundUser);
    } else if (body.cmd === CMD.UNBIND) {
      event("unbound " + (boundUser || ""));
      boundUser = null;
      setState("connected", "connected, no user bound");
    }
  }

  function onError(body) {
    const text = "server error: cmd " + (body.cmd || 0) + " code " + (body.code || 0) + " " + (body.reason || "");
    event(text);
    if (body.cmd === CMD.HANDSHAKE && body.code !== 102) {
      stopped = true;   // a refused handshake will not pass on a retry
    }
    setState("error", text);
  }

  // A KICK alone is MPush's: the user was bound elsewhere, and this
  // connection stays open.  An operator's kick closes it right after, with
  // close code KICKED_CLOSE (see onclose): the KICK itself cannot tell them
  // apart, so its text claims neither.
  function onKick(body) {
    kicked = true;
    boundUser = null;
    kickedUser = body.userId || "the user";
    setState("kicked", "kicked: " + kickedUser + " is no longer bound here");
    event("kicked (" + kickedUser + ")");
  }

  function dispatch(message) {
    let packet;
    try {
      packet = JSON.parse(message.data);
    } catch (e) {
      event("unreadable frame from the server");
      return;
    }
    const body = packet.body || {};
    switch (packet.cmd) {
      case CMD.HANDSHAKE:
        handshaken = true;
        backoff = 1000;
        setState("connected", "connected, no user bound");
        event("handshake done");
        if (wantedUser() && !kicked) {
          bind();
        }
        break;
      case CMD.OK: onOk(body); break;
      case CMD.ERROR: onError(body); break;
      case CMD.KICK: onKick(body); break;
      case CMD.PUSH: onPush(packet); break;
      default: break;
    }
  }

  function socketUrl() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/";
  }

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    handshaken = false;
    boundUser = null;
    setState("connecting", "connecting to " + socketUrl() + "…");
    const ws = new WebSocket(socketUrl());
    socket = ws;
    ws.onopen = function () {
      setState("handshaking", "handshaking…");
      send(CMD.HANDSHAKE, {
        deviceId: deviceId(),
        osName: "web",
        osVersion: navigator.userAgent.slice(0, 200),
        clientVersion: "mpush-web/1",
      });
    };
    ws.onmessage = dispatch;
    ws.onclose = function (close) {
      if (socket !== ws) {
        return;
      }
      socket = null;
      handshaken = false;
      event("connection closed (" + close.code + (close.reason ? " " + close.reason : "") + ")");
      if (close.code === KICKED_CLOSE) {
        kicked = true;
        setState("kicked", "logged out: " + (kickedUser || "the user") + " was kicked by the operator");
        return;
      }
      if (kicked || stopped) {
        if (!kicked) {
          setState("closed", "disconnected");
        }
        return;
      }
      setState("closed", "disconnected; reconnecting in " + Math.round(backoff / 1000) + " s");
      retryTimer = setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    };
  }

  function reconnect() {
    stopped = false;
    kicked = false;
    if (socket) {
      const old = socket;
      socket = null;
      old.close(1000);
    }
    connect();
  }

  document.addEventListener("DOMContentLoaded", function () {
    const user = new URLSearchParams(location.search).get("user");
    if (user) {
      el("user").value = user;
    }
    el("bind-form").addEventListener("submit", function (e) { e.preventDefault(); bind(); });
    el("unbind").addEventListener("click", unbind);
    el("reconnect").addEventListener("click", reconnect);
    connect();
  });
})();
