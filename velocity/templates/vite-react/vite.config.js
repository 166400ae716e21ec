import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// The preview agent passes --port and --host; strictPort makes a taken port an error.
export default defineConfig({
  plugins: [react()],
  server: { strictPort: true },
});
