# frozen_string_literal: true

require_relative "test_helper"

class CredentialsFileTest < Minitest::Test
  include SecretsSidecarTestHelpers

  def test_reads_username_password_and_optional_connection_fields
    with_tmpdir do |d|
      path = publish(File.join(d, "db.json"),
                     "username" => "app", "password" => PASSWORD, "host" => "db.example", "port" => 3306,
                     "dbname" => "appdb", "engine" => "mysql")
      c = SecretsSidecar::CredentialsFile.new(path).read
      assert_equal "app", c.username
      assert_equal PASSWORD, c.password
      assert_equal "db.example", c.host
      assert_equal 3306, c.port
      assert_equal "appdb", c.dbname
      assert_equal :file, c.source
    end
  end

  def test_port_as_string_is_accepted
    with_tmpdir do |d|
      path = publish(File.join(d, "db.json"), "username" => "app", "password" => PASSWORD, "port" => "5432")
      assert_equal 5432, SecretsSidecar::CredentialsFile.new(path).read.port
    end
  end

  def test_unchanged_file_is_parsed_once_and_only_stat_ed_afterwards
    with_tmpdir do |d|
      path = publish(File.join(d, "db.json"), "username" => "app", "password" => PASSWORD)
      f = SecretsSidecar::CredentialsFile.new(path)
      first = f.read
      opens = count_calls(File.singleton_class, :open) { 50.times { assert_same first, f.read } }
      assert_equal 1, f.parses
      assert_equal 0, opens, "an unchanged file was opened again"
    end
  end

  def test_replaced_file_is_re_read
    with_tmpdir do |d|
      path = publish(File.join(d, "db.json"), "username" => "app", "password" => "old-password-1")
      f = SecretsSidecar::CredentialsFile.new(path)
      assert_equal "old-password-1", f.read.password
      publish(path, "username" => "app", "password" => "new-password-2")
      assert_equal "new-password-2", f.read.password
      assert_equal 2, f.parses
    end
  end

  # Same inode, same size, new content: mtime/ctime must tell it apart (an in-place rewrite).
  def test_in_place_rewrite_of_same_size_is_detected
    with_tmpdir do |d|
      path = File.join(d, "db.json")
      File.write(path, JSON.generate("username" => "app", "password" => "aaaaaaaa"))
      f = SecretsSidecar::CredentialsFile.new(path)
      assert_equal "aaaaaaaa", f.read.password
      ino = File.stat(path).ino
      sleep 0.01
      File.write(path, JSON.generate("username" => "app", "password" => "bbbbbbbb"))
      assert_equal ino, File.stat(path).ino
      assert_equal "bbbbbbbb", f.read.password
    end
  end

  def test_missing_file_names_path_process_and_sidecar_settings
    with_tmpdir do |d|
      path = File.join(d, "db.json")
      err = assert_raises(SecretsSidecar::FileError) { SecretsSidecar::CredentialsFile.new(path).read }
      assert_includes err.message, path
      assert_includes err.message, "ENOENT"
      assert_includes err.message, "uid #{Process.uid}"
      assert_includes err.message, "--secret NAME"
      assert_includes err.message, "directory #{d}: owner uid"
      assert_equal Errno::ENOENT, err.errno
    end
  end

  # A real EACCES: as root, a 0400 root-owned file read by a child that dropped to nobody; otherwise a
  # mode-0000 file of our own.
  def test_permission_denied_names_owner_mode_process_ids_and_file_mode_flags
    with_tmpdir do |d|
      path = publish(File.join(d, "db.json"), "username" => "app", "password" => PASSWORD)
      message =
        if Process.euid.zero?
          File.chmod(0o400, path)
          File.chmod(0o755, d)
          read_as_other_user(path, 65_534, 65_534)
        else
          File.chmod(0o000, path)
          begin
            SecretsSidecar::CredentialsFile.new(path).read
            flunk "mode 0000 file was readable"
          rescue SecretsSidecar::FileError => e
            e.message
          end
        end
      assert_includes message, path
      assert_includes message, "EACCES"
      if Process.euid.zero?
        assert_match(/owner uid 0\b/, message)
        assert_includes message, "mode 0400"
        assert_match(/this process: uid 65534\b/, message)
        assert_match(/gid 65534\b/, message)
      else
        assert_includes message, "mode 0000"
        assert_includes message, "uid #{Process.uid}"
      end
      assert_includes message, "--file-mode"
      assert_includes message, "--file-uid/--file-gid"
      assert_includes message, "`user`"
      assert_no_secret message
    end
  end

  def test_message_builder_for_eacces_without_a_stat_able_file
    msg = SecretsSidecar::Diagnostics.unreadable_message("/nonexistent-dir/x/db.json", Errno::EACCES.new("x"),
                                                         process: "uid 1000, gid 1000")
    assert_includes msg, "/nonexistent-dir/x/db.json permission denied (EACCES)"
    assert_includes msg, "cannot be stat-ed"
    assert_includes msg, "this process: uid 1000, gid 1000"
    refute_includes msg, "  file:"
  end

  def test_invalid_json_error_never_quotes_the_content
    with_tmpdir do |d|
      path = publish(File.join(d, "db.json"), %({"username":"app","password":"#{PASSWORD}",))
      err = assert_raises(SecretsSidecar::FormatError) { SecretsSidecar::CredentialsFile.new(path).read }
      assert_includes err.message, "not valid JSON"
      assert_includes err.message, path
      assert_no_secret err.message
      assert_no_secret err.full_message
    end
  end

  def test_missing_password_lists_keys_not_values
    with_tmpdir do |d|
      path = publish(File.join(d, "db.json"), "username" => "app", "passwd" => PASSWORD)
      err = assert_raises(SecretsSidecar::FormatError) { SecretsSidecar::CredentialsFile.new(path).read }
      assert_includes err.message, "passwd, username"
      assert_no_secret err.message
    end
  end

  def test_non_object_json_is_rejected
    with_tmpdir do |d|
      path = publish(File.join(d, "db.json"), %(["#{PASSWORD}"]))
      err = assert_raises(SecretsSidecar::FormatError) { SecretsSidecar::CredentialsFile.new(path).read }
      assert_includes err.message, "an array"
      assert_no_secret err.message
    end
  end

  private

  def count_calls(mod, name)
    count = 0
    counter = Module.new do
      define_method(name) do |*a, **k, &b|
        count += 1
        super(*a, **k, &b)
      end
    end
    mod.prepend(counter)
    yield
    count
  ensure
    counter.send(:remove_method, name)
  end

  def read_as_other_user(path, uid, gid)
    r, w = IO.pipe
    pid = fork do
      r.close
      Process::Sys.setgid(gid)
      Process.groups = [gid] rescue nil
      Process::Sys.setuid(uid)
      begin
        SecretsSidecar::CredentialsFile.new(path).read
        w.write("UNEXPECTEDLY READABLE")
      rescue SecretsSidecar::FileError => e
        w.write(e.message)
      end
      w.close
      exit!(0)
    end
    w.close
    out = r.read
    Process.wait(pid)
    refute_equal "UNEXPECTEDLY READABLE", out
    out
  end
end
