import { useState } from 'preact/hooks';
import { ApiError, login } from '../api.js';

export function Login({ onLoggedIn }: { onLoggedIn: () => void }) {
  const [user, setUser] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  return (
    <main class="login">
      <h1>Nimbus</h1>
      <form onSubmit={(e) => {
        e.preventDefault();
        setBusy(true);
        setError(null);
        login(user, password).then(onLoggedIn, (x: unknown) => {
          setError(x instanceof ApiError ? x.message : String(x));
          setBusy(false);
        });
      }}>
        <label>User <input name="user" autocomplete="username" required value={user} onInput={(e) => setUser((e.target as HTMLInputElement).value)} /></label>
        <label>Password <input name="password" type="password" autocomplete="current-password" value={password} onInput={(e) => setPassword((e.target as HTMLInputElement).value)} /></label>
        {error ? <p role="alert" class="error">{error}</p> : null}
        <button type="submit" disabled={busy}>Log in</button>
      </form>
    </main>
  );
}
