// The project list: sign in, see your projects, create one from a template and open it.

import { el, forgetToken, request, signIn } from "./api.js";

const $ = (id) => document.getElementById(id);

async function main() {
  $("sign-out").addEventListener("click", () => {
    forgetToken();
    location.reload();
  });
  const me = await signIn($("gate"));
  $("who").textContent = me.email || me.userId;
  $("gate").replaceChildren();
  $("projects").hidden = false;
  $("new-project").addEventListener("submit", async (submitted) => {
    submitted.preventDefault();
    try {
      const project = await request("POST", "/play/api/projects", {
        name: $("project-name-input").value, template: $("project-template").value,
      });
      location.assign(`/play/${project.id}`);
    } catch (error) {
      $("new-project-problem").textContent = error.message;
    }
  });
  const config = await request("GET", "/play/api/config");
  $("project-template").replaceChildren(...config.templates.map(
    (name) => el("option", { value: name, text: name, selected: name === "static" })));
  const projects = await request("GET", "/play/api/projects");
  $("project-list").replaceChildren(...(projects.length ? projects.map((project) => el("li", {},
    el("a", { href: `/play/${project.id}`, class: "project", text: project.name }),
    el("span", { class: "muted", text: ` ${project.template || "no template"} · ${project.role}` })))
    : [el("li", { class: "muted", text: "No projects yet: create one." })]));
}

main().catch((error) => {
  $("gate").replaceChildren(el("p", { class: "problem", role: "alert", text: error.message }));
});
