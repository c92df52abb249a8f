// Lint rules that guard the two failure modes that hurt a FUSE daemon most:
// `any` leaking past the one typed boundary to fuse-native, and floating promises
// (an unawaited promise in a FUSE handler is a system call that never returns).
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**'] },
  {
    files: ['src/**/*.ts', 'test/**/*.ts', 'bench/**/*.ts'],
    extends: [tseslint.configs.base],
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
    },
  },
  {
    // The single place where fuse-native's untyped API is given types.
    files: ['src/fuse/fuse-native/binding.ts'],
    rules: { '@typescript-eslint/no-explicit-any': 'off' },
  },
);
