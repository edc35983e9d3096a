// ESLint 9 flat config for TypeScript snippets: the JavaScript config plus
// typescript-eslint's recommended rules (no type-aware rules: a snippet has no
// tsconfig, and type information would cost seconds).
import tseslint from "typescript-eslint";
import { base, tsFiles } from "./eslint.config.mjs";

export default [
  ...base,
  ...tseslint.configs.recommended.map((config) => ({ ...config, files: tsFiles })),
];
