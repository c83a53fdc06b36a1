/**
 * Runs in every test file (vitest `setupFiles`). Its after-all hook was
 * registered first, so it runs last: after the file's own hooks have stopped
 * the processes and servers that used the directories.
 */
import { afterAll } from 'vitest';
import { removeTempDirs } from './helpers/temp.js';

afterAll(removeTempDirs);
