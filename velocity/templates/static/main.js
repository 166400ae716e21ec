const message = document.getElementById("message");
if (message) {
  message.textContent += ` Loaded at ${new Date().toLocaleTimeString()}.`;
}
